// A Generic Host that trains a draft in the background (IDraftTrainingQueue) while it serves chat requests through the
// injected IChatClient. Stopping it (Ctrl+C) checkpoints the training job; the next start resumes it from jobs.json.
//
// Usage: dotnet run --project samples/Beagle.Samples.Worker [--once] [--data FILE] [--target PATH] [--tokenizer PATH]
//        [--draft DIR | --no-draft] [host settings, e.g. --Beagle:DefaultMaxTokens=64]
//   model:  --target PATH (or stories260K), else Beagle:TargetPath (configuration), else the bundled stories5M with its
//           bundled Beagle draft when present
//   jobs:   Beagle:Training:JobsFolder, else ./beagle-jobs (--once: a temporary folder, deleted at exit)
//   data:   --data FILE (text or jsonl); without it the target writes its own training text (TrainingOptions.Generate)
//   --once: train a few steps, answer one prompt meanwhile, wait for the draft, stop cleanly, exit 0.
//   Otherwise each line on standard input is a prompt; at the end of input the host waits for the job and stops.
// Answers go to stdout; logs (one line each, no stack traces) and statistics to stderr. A bad model or setting stops
// the worker with one line on stderr and a non-zero exit code.
using Beagle.Hosting.Training;
using Beagle.Runtime;
using Beagle.Samples;
using Beagle.SemanticKernel;
using Beagle.Training;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

bool once = false, noDraft = false;
string? data = null, target = null, tokenizer = null, draft = null;
var hostArgs = new List<string>();   // everything else is host configuration (--Section:Key=value)
try
{
    for (int i = 0; i < args.Length; i++)
    {
        string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
        switch (args[i])
        {
            case "--once": once = true; break;
            case "--no-draft": noDraft = true; break;
            case "--data": data = Value(); break;
            case "--target": target = Value(); break;
            case "--tokenizer": tokenizer = Value(); break;
            case "--draft": draft = Value(); break;
            default: hostArgs.Add(args[i]); break;
        }
    }
}
catch (ArgumentException e) { Console.Error.WriteLine($"error: {e.Message}"); return 2; }
if (data is not null && !File.Exists(data)) { Console.Error.WriteLine($"error: --data: no file at '{data}'"); return 2; }

var builder = Host.CreateApplicationBuilder(hostArgs.ToArray());
var defaults = new Dictionary<string, string?> { ["Beagle:Threads"] = "1", ["Beagle:DefaultMaxTokens"] = "48" };
string? tempJobs = once ? Path.Combine(Path.GetTempPath(), "beagle-worker-" + Guid.NewGuid().ToString("N")[..8]) : null;
defaults["Beagle:Training:JobsFolder"] = tempJobs ?? Path.GetFullPath("beagle-jobs");
// Defaults first, so appsettings.json, environment variables and the command line override them.
builder.Configuration.Sources.Insert(0, new Microsoft.Extensions.Configuration.Memory.MemoryConfigurationSource { InitialData = defaults });
// The model flags come last, so they override configuration; without --target or Beagle:TargetPath, the default model.
var model = new Dictionary<string, string?>();
try
{
    if (target is not null || string.IsNullOrEmpty(builder.Configuration["Beagle:TargetPath"]))
    {
        var m = SampleModels.Resolve(target, tokenizer, draft ?? builder.Configuration["Beagle:DraftPath"], noDraft);
        model["Beagle:TargetPath"] = m.Target;
        if (m.Tokenizer is not null) model["Beagle:TokenizerPath"] = m.Tokenizer;
        if (m.Draft is not null) model["Beagle:DraftPath"] = m.Draft;
    }
    else
    {
        if (tokenizer is not null) model["Beagle:TokenizerPath"] = tokenizer;
        if (draft is not null) model["Beagle:DraftPath"] = draft;
    }
}
catch (ModelNotAvailableException e) { return SampleModels.Fail(e); }
builder.Configuration.AddInMemoryCollection(model);
builder.Logging.AddSampleConsole();
builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
// Start failures (a bad setting) and a model that fails to load are reported once, by this program (below); the
// engine provider logs nothing else a user of this sample needs (its template and load messages).
builder.Logging.AddFilter("Microsoft.Extensions.Hosting", LogLevel.None);
builder.Logging.AddFilter("Beagle.Hosting.BeagleEngineLoader", LogLevel.None);
builder.Logging.AddFilter(typeof(BeagleEngineProvider).FullName, LogLevel.None);
builder.Services.Configure<Microsoft.Extensions.Logging.Console.ConsoleFormatterOptions>(o => o.TimestampFormat = "HH:mm:ss ");

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
    Console.Error.WriteLine($"error: configuration: {e.Message} (pass --target PATH, or set Beagle:TargetPath)");
    return 2;
}
catch (OperationCanceledException)
{
    // Stopped (Ctrl+C, SIGTERM) while the host was still starting, e.g. loading the model: nothing ran yet, nothing to lose.
    Console.Error.WriteLine("stopped before the worker started");
    return 0;
}
catch (Exception e)
{
    return SampleModels.Fail(e);
}
finally
{
    if (tempJobs is not null) try { Directory.Delete(tempJobs, true); } catch (IOException) { }
}

sealed record WorkerSettings(bool Once, string? DataPath);

/// <summary>Queues a training job (unless one is already unfinished, which the queue resumes itself) and serves prompts meanwhile.</summary>
sealed class ChatWorker(IChatClient chat, BeagleEngineProvider model, IDraftTrainingQueue training, WorkerSettings settings,
    IHostApplicationLifetime lifetime, ILogger<ChatWorker> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try { await model.GetReadyEngineAsync(stoppingToken); }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // A server would keep running and report it in its health check; this sample stops and says why.
            Environment.ExitCode = SampleModels.Fail(e);
            lifetime.StopApplication();
            return;
        }
        try
        {
            string jobId = training.GetJobs().FirstOrDefault(j => !j.IsFinished)?.Id ?? training.Enqueue(Job());
            logger.LogInformation("training job {Job} runs in the background", jobId);

            if (settings.Once) await AnswerAsync("Once upon a time, there was a little cat", stoppingToken);
            else
                while (await ReadLineAsync(stoppingToken) is { } line)
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
            Environment.ExitCode = SampleModels.Fail(e);
        }
        lifetime.StopApplication();
    }

    /// <summary>
    /// The next line of standard input, or OperationCanceledException as soon as the host stops. Console.In's own
    /// ReadLineAsync(token) reads synchronously and looks at the token only before it starts, so a worker waiting for a
    /// prompt held shutdown for the whole HostOptions.ShutdownTimeout; the read runs on the thread pool instead, and a
    /// read abandoned at shutdown ends with the process.
    /// </summary>
    static Task<string?> ReadLineAsync(CancellationToken ct) => Task.Run(Console.In.ReadLine, CancellationToken.None).WaitAsync(ct);

    async Task AnswerAsync(string prompt, CancellationToken ct)
    {
        Console.WriteLine($"> {prompt}");
        ChatResponseUpdate? last = null;
        await foreach (var u in chat.GetStreamingResponseAsync(prompt, cancellationToken: ct)) { Console.Write(u.Text); last = u; }
        var props = last?.AdditionalProperties;
        Console.WriteLine();
        Console.Error.WriteLine($"  [{props?.GetValueOrDefault("tokens_per_second"):F1} tok/s, acceptance length {props?.GetValueOrDefault("acceptance_length"):F2}, speculative {props?.GetValueOrDefault("speculative")}]");
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
