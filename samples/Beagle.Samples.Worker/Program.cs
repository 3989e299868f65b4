// A Generic Host that trains a draft in the background (IDraftTrainingQueue) while it serves chat requests through the
// injected IChatClient. Stopping it (Ctrl+C) checkpoints the training job; the next start resumes it from jobs.json.
//
// Usage: dotnet run --project samples/Beagle.Samples.Worker [--once] [--data FILE] [host settings, e.g. --Beagle:DraftPath=DIR]
//   model:  Beagle:TargetPath / Beagle:TokenizerPath (configuration), else $BEAGLE_MODELS/stories260K.bin and tok512.bin
//   jobs:   Beagle:Training:JobsFolder, else ./beagle-jobs (--once: a temporary folder, deleted at exit)
//   data:   --data FILE (text or jsonl); without it the target writes its own training text (TrainingOptions.Generate)
//   --once: train a few steps, answer one prompt meanwhile, wait for the draft, stop cleanly, exit 0.
//   Otherwise each line on standard input is a prompt; at the end of input the host waits for the job and stops.
using Beagle.Hosting.Training;
using Beagle.Training;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

bool once = false;
string? data = null;
var hostArgs = new List<string>();   // everything else is host configuration (--Section:Key=value)
for (int i = 0; i < args.Length; i++)
{
    if (args[i] == "--once") once = true;
    else if (args[i] == "--data") data = i + 1 < args.Length ? args[++i] : throw new ArgumentException("--data needs a file");
    else hostArgs.Add(args[i]);
}

var builder = Host.CreateApplicationBuilder(hostArgs.ToArray());
var defaults = new Dictionary<string, string?> { ["Beagle:Threads"] = "1", ["Beagle:DefaultMaxTokens"] = "48" };
string? models = Environment.GetEnvironmentVariable("BEAGLE_MODELS");
if (!string.IsNullOrEmpty(models))
{
    defaults["Beagle:TargetPath"] = Path.Combine(models, "stories260K.bin");
    defaults["Beagle:TokenizerPath"] = Path.Combine(models, "tok512.bin");
}
string? tempJobs = once ? Path.Combine(Path.GetTempPath(), "beagle-worker-" + Guid.NewGuid().ToString("N")[..8]) : null;
defaults["Beagle:Training:JobsFolder"] = tempJobs ?? Path.GetFullPath("beagle-jobs");
// Defaults first, so appsettings.json, environment variables and the command line override them.
builder.Configuration.Sources.Insert(0, new Microsoft.Extensions.Configuration.Memory.MemoryConfigurationSource { InitialData = defaults });
builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });

builder.Services.AddBeagle(builder.Configuration.GetSection("Beagle"));
builder.Services.AddBeagleDraftTraining(builder.Configuration.GetSection("Beagle:Training"));
builder.Services.AddSingleton(new WorkerSettings(once, data));
builder.Services.AddHostedService<ChatWorker>();

try
{
    using var host = builder.Build();
    await host.RunAsync();
    return Environment.ExitCode;
}
catch (Microsoft.Extensions.Options.OptionsValidationException e)
{
    Console.Error.WriteLine($"configuration: {e.Message} (set BEAGLE_MODELS or --Beagle:TargetPath=...)");
    return 2;
}
finally
{
    if (tempJobs is not null) try { Directory.Delete(tempJobs, true); } catch (IOException) { }
}

sealed record WorkerSettings(bool Once, string? DataPath);

/// <summary>Queues a training job (unless one is already unfinished, which the queue resumes itself) and serves prompts meanwhile.</summary>
sealed class ChatWorker(IChatClient chat, IDraftTrainingQueue training, WorkerSettings settings, IHostApplicationLifetime lifetime, ILogger<ChatWorker> logger)
    : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            string jobId = training.GetJobs().FirstOrDefault(j => !j.IsFinished)?.Id ?? training.Enqueue(Job());
            logger.LogInformation("training job {Job} runs in the background", jobId);

            if (settings.Once) await AnswerAsync("Once upon a time, there was a little cat", stoppingToken);
            else
                while (!stoppingToken.IsCancellationRequested && await Console.In.ReadLineAsync(stoppingToken) is { } line)
                    if (line.Trim().Length > 0) await AnswerAsync(line, stoppingToken);

            var job = await training.WaitForCompletionAsync(jobId, stoppingToken);
            Console.WriteLine(job.State != DraftTrainingJobState.Completed ? $"training job {job.Id} ended {job.State}: {job.Error}"
                : settings.Once ? $"draft trained: {job.Step} steps, written to {job.DraftDir} (a temporary folder with --once)"
                : $"draft trained: {job.DraftDir} ({job.Step} steps); serve it with --Beagle:DraftPath={job.DraftDir}");
            if (job.State != DraftTrainingJobState.Completed) Environment.ExitCode = 1;
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            Console.WriteLine("stopping: the training job keeps its checkpoint and resumes at the next start");
        }
        catch (Exception e)
        {
            logger.LogError(e, "the worker failed");
            Environment.ExitCode = 1;
        }
        lifetime.StopApplication();
    }

    async Task AnswerAsync(string prompt, CancellationToken ct)
    {
        Console.WriteLine($"> {prompt}");
        ChatResponseUpdate? last = null;
        await foreach (var u in chat.GetStreamingResponseAsync(prompt, cancellationToken: ct)) { Console.Write(u.Text); last = u; }
        var props = last?.AdditionalProperties;
        Console.WriteLine();
        Console.WriteLine($"  [{props?.GetValueOrDefault("tokens_per_second"):F1} tok/s, acceptance length {props?.GetValueOrDefault("acceptance_length"):F2}, speculative {props?.GetValueOrDefault("speculative")}]");
    }

    /// <summary>A small run: a few steps with --once, a real (still small) one otherwise.</summary>
    TrainingOptions Job() => new()
    {
        OutputDir = "",   // the queue gives the job its own folder under the jobs folder
        DataPaths = settings.DataPath is null ? [] : [settings.DataPath],
        Generate = settings.DataPath is null ? (settings.Once ? 16 : 200) : 0,
        GenerateMaxTokens = settings.Once ? 80 : 256,
        SeqLen = settings.Once ? 64 : 256, BatchSize = settings.Once ? 4 : 16, MaxSequences = settings.Once ? 12 : 0,
        Epochs = settings.Once ? 2 : 10, WindowK = settings.Once ? 3 : 5, SimSteps = settings.Once ? 2 : 4,
        WarmupSteps = settings.Once ? 1 : 50, EvalPrompts = settings.Once ? 0 : 8, Plots = !settings.Once,
        LogEverySteps = settings.Once ? 1 : 10,
    };
}
