using Beagle.Hosting.Training;
using Beagle.Training;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Beagle.Tests.Infrastructure;

/// <summary>
/// The test assembly's entry point (the test SDK's generated one is turned off in the project file). Under `dotnet test`
/// it is never called; `dotnet Beagle.Tests.dll NAME args...` runs one of the programs below as a child process, for
/// tests of what only a whole process shows (how it exits, what it leaves on disk).
/// </summary>
public static class ChildPrograms
{
    public static int Main(string[] args) => args switch
    {
        ["training-host", .. var rest] => TrainingHost(rest).GetAwaiter().GetResult(),
        _ => Usage(),
    };

    static int Usage()
    {
        Console.Error.WriteLine("usage: dotnet Beagle.Tests.dll training-host JOBS DATA SHUTDOWN_MS (stop-at-step N | finish)");
        return 2;
    }

    /// <summary>`dotnet Beagle.Tests.dll NAME args...` from the test's output folder, as a child process.</summary>
    public static ProcessResult Run(string name, params string[] args) =>
        ChildProcess.Dotnet(Path.Combine(AppContext.BaseDirectory, "Beagle.Tests.dll"), [name, .. args], timeout: TimeSpan.FromMinutes(3));

    /// <summary>
    /// A Generic Host with the draft-training queue and a shutdown timeout of SHUTDOWN_MS. "stop-at-step N": queue a job
    /// (unless jobs.json has an unfinished one, which resumes by itself), stop the host as soon as step N is reported, while
    /// the next step runs. "finish": wait for the job to finish, then stop. Prints the job's id, state and step on stdout.
    /// </summary>
    static async Task<int> TrainingHost(string[] args)
    {
        if (args is not [var jobsFolder, var data, var shutdownMs, var mode, ..]) return Usage();
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromMilliseconds(int.Parse(shutdownMs)));
        builder.Logging.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Information);
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?> { ["Beagle:Training:JobsFolder"] = jobsFolder });
        builder.Services.AddBeagleDraftTraining(builder.Configuration.GetSection("Beagle:Training"));
        using var host = builder.Build();
        await host.StartAsync();
        var queue = host.Services.GetRequiredService<IDraftTrainingQueue>();
        string id = queue.GetJobs().FirstOrDefault(j => !j.IsFinished)?.Id ?? queue.Enqueue(ShutdownJob(data));
        if (mode == "finish")
            await queue.WaitForCompletionAsync(id);
        else
        {
            long stopAt = long.Parse(args[4]);
            using var reached = new ManualResetEventSlim();
            using var sub = queue.Observe(id).Subscribe(new StepObserver(p => { if (p.Message is null && p.Step >= stopAt) reached.Set(); }));
            if (!reached.Wait(TimeSpan.FromMinutes(2))) { Console.Error.WriteLine($"step {stopAt} never came"); return 3; }
            Thread.Sleep(int.Parse(args[5]));   // into the next step
        }
        await host.StopAsync();
        var job = queue.GetJob(id)!;
        Console.WriteLine($"{job.Id} {job.State} {job.Step}");
        return 0;
    }

    /// <summary>
    /// Steps of ~0.1-0.3 s on 2 cores (stories260K, 24 sequences of 128 tokens, batch 8, stage 2 with 3 simulated steps),
    /// so that a shutdown timeout of a few milliseconds ends inside one. 3 steps per epoch × 3 epochs.
    /// </summary>
    public static TrainingOptions ShutdownJob(string data) => new()
    {
        OutputDir = "", DataPaths = [data], TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath,
        SeqLen = 256, BatchSize = 16, MaxSequences = 48, Epochs = 3, Stage1Epochs = 1, WindowK = 4, SimSteps = 3, WarmupSteps = 2,
        EvalPrompts = 0, Plots = false, LogEverySteps = 1, CheckpointEverySteps = 2, Seed = 11,
    };

    sealed class StepObserver(Action<TrainingProgress> onNext) : IObserver<TrainingProgress>
    {
        public void OnNext(TrainingProgress value) => onNext(value);
        public void OnCompleted() { }
        public void OnError(Exception error) { }
    }
}
