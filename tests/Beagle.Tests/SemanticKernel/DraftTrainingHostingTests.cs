using System.Text.Json.Nodes;
using Beagle.Drafting;
using Beagle.Hosting.Training;
using Beagle.Tests.Infrastructure;
using Beagle.Training;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using TorchSharp.PyBridge;
using Xunit;

namespace Beagle.Tests.SemanticKernel;

/// <summary>
/// The hosted draft-training queue. Training is tiny (stories260K, seq-len 64, batch 4, a dozen steps, no
/// evaluation) so each test takes seconds.
/// </summary>
public sealed class DraftTrainingHostingTests
{
    static IHost Build(string jobsFolder, bool serve = false, Dictionary<string, string?>? extra = null, ILoggerProvider? logger = null)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        if (logger is not null) builder.Logging.AddProvider(logger);
        var settings = new Dictionary<string, string?>
        {
            ["Beagle:TargetPath"] = TestAssets.ModelPath, ["Beagle:TokenizerPath"] = TestAssets.TokenizerPath,
            ["Beagle:Device"] = "cpu", ["Beagle:Threads"] = "1", ["Beagle:DefaultMaxTokens"] = "16",
            ["Beagle:Training:JobsFolder"] = jobsFolder,
        };
        foreach (var (k, v) in extra ?? []) settings[k] = v;
        builder.Configuration.AddInMemoryCollection(settings);
        if (serve) builder.Services.AddBeagle(builder.Configuration.GetSection("Beagle"));
        builder.Services.AddBeagleDraftTraining(builder.Configuration.GetSection("Beagle:Training"));
        return builder.Build();
    }

    static string DataFile(TempDir tmp)
    {
        var path = tmp.File("data.txt");
        if (!File.Exists(path))
            File.WriteAllText(path, string.Join("\n\n", TextSources.SplitPlainText(File.ReadAllText(TestAssets.TinyStories)).Take(60)));
        return path;
    }

    /// <summary>12 sequences / batch 4 = 3 steps per epoch × 4 epochs = 12 steps; no target path (the served model's is used).</summary>
    static TrainingOptions Tiny(TempDir tmp, string? outputDir = null) => new()
    {
        OutputDir = outputDir ?? "", DataPaths = [DataFile(tmp)], TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath,
        SeqLen = 64, BatchSize = 4, MaxSequences = 12, Epochs = 4, Stage1Epochs = 2, WindowK = 3, SimSteps = 2, WarmupSteps = 2,
        EvalPrompts = 0, Plots = false, LogEverySteps = 1, CheckpointEverySteps = 100, Seed = 5,
    };

    [Fact]
    public async Task Host_starts_and_stops_with_the_queue_the_chat_client_and_the_trainer_resolved()
    {
        using var tmp = TestAssets.TempDir();
        using var host = Build(tmp.File("jobs"), serve: true);
        await host.StartAsync();
        var queue = host.Services.GetRequiredService<IDraftTrainingQueue>();
        Assert.Same(queue, host.Services.GetServices<IHostedService>().OfType<DraftTrainingService>().Single());
        Assert.Empty(queue.GetJobs());
        Assert.NotNull(host.Services.GetRequiredService<IChatClient>());
        await host.StopAsync();
        // Nothing was queued, so nothing was written: no jobs file, no temporary file left behind.
        Assert.Empty(Directory.GetFiles(tmp.File("jobs")));

        // What a host persists, the next host on the same folder sees: a job queued and cancelled (before the start, so
        // that it never runs), then a start and a stop.
        string id;
        using (var first = Build(tmp.File("jobs")))
        {
            var q = first.Services.GetRequiredService<IDraftTrainingQueue>();
            id = q.Enqueue(Tiny(tmp));
            Assert.True(q.Cancel(id));
            await first.StartAsync();
            await first.StopAsync();
        }
        Assert.Equal([DraftTrainingService.JobsFile], Directory.GetFiles(tmp.File("jobs")).Select(Path.GetFileName));
        using var second = Build(tmp.File("jobs"));
        var job = Assert.Single(second.Services.GetRequiredService<IDraftTrainingQueue>().GetJobs());
        Assert.Equal((id, DraftTrainingJobState.Cancelled), (job.Id, job.State));
    }

    [Fact]
    public async Task A_job_trains_while_the_host_serves_chat_and_reports_progress_and_status()
    {
        using var tmp = TestAssets.TempDir();
        using var host = Build(tmp.File("jobs"), serve: true);
        await host.StartAsync();
        var queue = host.Services.GetRequiredService<IDraftTrainingQueue>();
        var states = new List<DraftTrainingJobState>();
        queue.JobChanged += (_, j) => { lock (states) states.Add(j.State); };
        var steps = new List<long>();
        bool completed = false;
        // Training loss reaches System.Diagnostics.Metrics (OpenTelemetry / dotnet-counters read the same instruments).
        var losses = new List<(double Value, string? Job)>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (i, l) => { if (i.Meter.Name == Beagle.SemanticKernel.BeagleMetrics.MeterName && i.Name == "beagle.training.loss") l.EnableMeasurementEvents(i); };
        listener.SetMeasurementEventCallback<double>((_, v, tags, _) =>
        {
            string? job = null;
            foreach (var t in tags) if (t.Key == "beagle.job") job = t.Value as string;
            lock (losses) losses.Add((v, job));
        });
        listener.Start();

        string id = queue.Enqueue(Tiny(tmp) with { TargetPath = null, TokenizerPath = null });   // the served model's paths
        using var sub = queue.Observe(id).Subscribe(new Observer(p => { lock (steps) steps.Add(p.Step); }, () => completed = true));
        var chat = await host.Services.GetRequiredService<IChatClient>().GetResponseAsync("Once upon a time");   // served meanwhile
        var job = await queue.WaitForCompletionAsync(id).WaitAsync(TimeSpan.FromMinutes(2));

        Assert.Equal(16, chat.Usage!.OutputTokenCount);
        Assert.Equal(DraftTrainingJobState.Completed, job.State);
        Assert.Equal(12, job.Step);
        Assert.Equal(Path.Combine(tmp.File("jobs"), id), job.Options.OutputDir);   // its own output folder
        Assert.Equal(TestAssets.ModelPath, job.Options.TargetPath);
        Assert.True(File.Exists(Path.Combine(job.DraftDir!, DraftCheckpoint.MetaFile)));
        Assert.True(completed);
        lock (steps) Assert.Contains(12L, steps);
        lock (states) Assert.Equal([DraftTrainingJobState.Queued, DraftTrainingJobState.Running, DraftTrainingJobState.Completed], states);
        lock (losses) Assert.Contains(losses, l => l.Job == id && double.IsFinite(l.Value) && l.Value > 0);
        await host.StopAsync();
    }

    [Fact]
    public async Task A_job_interrupted_by_host_shutdown_resumes_from_its_checkpoint_at_the_next_start_and_ends_like_an_uninterrupted_one()
    {
        using var tmp = TestAssets.TempDir();
        string jobs = tmp.File("jobs");
        string id;
        // First host: stop it while the job runs (after step 2; the trainer checkpoints where it is).
        using (var host = Build(jobs))
        {
            await host.StartAsync();
            var queue = host.Services.GetRequiredService<IDraftTrainingQueue>();
            id = queue.Enqueue(Tiny(tmp));
            using var reached = new ManualResetEventSlim();
            using var stopRequested = new ManualResetEventSlim();
            Exception? observed = null;
            // The observer runs on the training thread: holding it at step 2 until the stop began makes the interruption deterministic.
            using var sub = queue.Observe(id).Subscribe(new Observer(p =>
            {
                if (p.Step == 2 && p.Message is null) { reached.Set(); stopRequested.Wait(TimeSpan.FromSeconds(30)); }
            }, onError: e => observed = e));
            Assert.True(reached.Wait(TimeSpan.FromMinutes(2)), "the job never reached step 2");
            var waiter = queue.WaitForCompletionAsync(id);
            var stop = host.StopAsync();
            stopRequested.Set();
            await stop;

            Assert.IsAssignableFrom<OperationCanceledException>(observed);
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiter);
            var status = queue.GetJob(id)!;
            Assert.Equal(DraftTrainingJobState.Interrupted, status.State);
            Assert.InRange(status.Step, 2, 11);
        }
        var saved = JsonNode.Parse(File.ReadAllText(Path.Combine(jobs, DraftTrainingService.JobsFile)))!["jobs"]!.AsArray().Single()!;
        Assert.Equal("Interrupted", (string?)saved["state"]);
        long checkpointStep = (long)JsonNode.Parse(File.ReadAllText(Path.Combine(jobs, id, "checkpoint", "state.json")))!["step"]!;
        Assert.InRange(checkpointStep, 2, 11);
        Assert.False(Directory.Exists(Path.Combine(jobs, id, "draft")));

        // Second host on the same folder: the job resumes by itself; an uninterrupted twin runs after it for comparison.
        using (var host = Build(jobs))
        {
            await host.StartAsync();
            var queue = host.Services.GetRequiredService<IDraftTrainingQueue>();
            var firstProgress = new List<long>();
            using var sub = queue.Observe(id).Subscribe(new Observer(p => { if (p.Message is null) lock (firstProgress) firstProgress.Add(p.Step); }));   // step reports, not notes
            string twin = queue.Enqueue(Tiny(tmp));
            var resumed = await queue.WaitForCompletionAsync(id).WaitAsync(TimeSpan.FromMinutes(2));
            var uninterrupted = await queue.WaitForCompletionAsync(twin).WaitAsync(TimeSpan.FromMinutes(2));

            Assert.Equal(DraftTrainingJobState.Completed, resumed.State);
            Assert.Equal(2, resumed.Attempts);
            Assert.Equal(checkpointStep, resumed.ResumedFromStep);
            Assert.Equal(DraftTrainingJobState.Completed, uninterrupted.State);
            Assert.Equal(1, uninterrupted.Attempts);
            Assert.Equal(12, uninterrupted.Step);
            Assert.Equal(uninterrupted.Step, resumed.Step);
            lock (firstProgress) Assert.Equal(checkpointStep + 1, firstProgress.Min());   // no step was trained twice
            Assert.Equal(12L, (long)DraftCheckpoint.ReadTraining(resumed.DraftDir!)["steps"]!);

            // Resuming is exact (TrainerTests): the interrupted job's draft equals the uninterrupted one's.
            using var a = DraftCheckpoint.Load(resumed.DraftDir!, TestAssets.Stories);
            using var b = DraftCheckpoint.Load(uninterrupted.DraftDir!, TestAssets.Stories);
            var pa = a.state_dict(); var pb = b.state_dict();
            foreach (var k in pa.Keys) Assert.True(pa[k].allclose(pb[k], rtol: 0, atol: 1e-6), $"parameter {k} differs after resume");
            await host.StopAsync();
        }
    }

    [Fact]
    public async Task Cancel_stops_a_job_for_good_and_bad_options_are_refused_at_Enqueue()
    {
        using var tmp = TestAssets.TempDir();
        using var host = Build(tmp.File("jobs"));
        var queue = host.Services.GetRequiredService<IDraftTrainingQueue>();
        var bad = Assert.Throws<ArgumentException>(() => queue.Enqueue(Tiny(tmp) with { BatchSize = 0 }));
        Assert.Contains("batch", bad.Message);
        var noTarget = Assert.Throws<ArgumentException>(() => queue.Enqueue(Tiny(tmp) with { TargetPath = " " }));
        Assert.Contains("TargetPath", noTarget.Message);
        // No target and no served model: the default model, as its files (the trainer reads files, not names).
        string byDefault = queue.Enqueue(Tiny(tmp, tmp.File("default-out")) with { TargetPath = null, TokenizerPath = null });
        Assert.EndsWith("stories5M.bin", queue.GetJob(byDefault)!.Options.TargetPath);
        Assert.True(queue.Cancel(byDefault));
        string shared = tmp.File("shared-out");
        string first = queue.Enqueue(Tiny(tmp, shared));
        Assert.Throws<ArgumentException>(() => queue.Enqueue(Tiny(tmp, shared)));   // one output folder per unfinished job

        Assert.True(queue.Cancel(first));   // still queued: the host has not started
        Assert.Equal(DraftTrainingJobState.Cancelled, queue.GetJob(first)!.State);
        Assert.False(queue.Cancel(first));
        await host.StartAsync();
        Assert.Equal(DraftTrainingJobState.Cancelled, (await queue.WaitForCompletionAsync(first)).State);
        await host.StopAsync();
    }

    [Fact]
    public void Jobs_json_keeps_every_unfinished_job_and_only_the_latest_finished_ones()
    {
        using var tmp = TestAssets.TempDir();
        using var host = Build(tmp.File("jobs"), extra: new() { ["Beagle:Training:MaxFinishedJobs"] = "2" });
        var queue = host.Services.GetRequiredService<IDraftTrainingQueue>();
        var cancelled = Enumerable.Range(0, 4).Select(i => queue.Enqueue(Tiny(tmp, tmp.File($"out{i}")))).ToList();
        string waiting = queue.Enqueue(Tiny(tmp, tmp.File("waiting")));   // the host is not started: it stays queued
        foreach (var id in cancelled) Assert.True(queue.Cancel(id));

        var saved = JsonNode.Parse(File.ReadAllText(Path.Combine(tmp.File("jobs"), DraftTrainingService.JobsFile)))!["jobs"]!.AsArray()
            .Select(j => (string)j!["id"]!).ToList();
        Assert.Equal(new[] { waiting, cancelled[2], cancelled[3] }.Order(), saved.Order());
        Assert.Equal(saved.Order(), queue.GetJobs().Select(j => j.Id).Order());
    }

    [Fact]
    public async Task A_corrupt_jobs_json_is_moved_aside_with_a_warning_and_the_host_keeps_serving()
    {
        using var tmp = TestAssets.TempDir();
        string jobs = tmp.File("jobs");
        Directory.CreateDirectory(jobs);
        File.WriteAllText(Path.Combine(jobs, DraftTrainingService.JobsFile), "{ \"jobs\": [ { \"id\": ");   // cut off mid-write
        var logs = new ListLogger();
        using var host = Build(jobs, logger: logs);
        await host.StartAsync();
        var queue = host.Services.GetRequiredService<IDraftTrainingQueue>();

        Assert.Empty(queue.GetJobs());
        var aside = Assert.Single(Directory.GetFiles(jobs, DraftTrainingService.JobsFile + ".corrupt-*"));
        Assert.StartsWith("{ \"jobs\"", File.ReadAllText(aside));
        lock (logs.Lines) Assert.Contains(logs.Lines, l => l.StartsWith("Warning:", StringComparison.Ordinal) && l.Contains(aside));
        string id = queue.Enqueue(Tiny(tmp) with { StopAfterSteps = 1 });   // and the queue works
        Assert.Equal(DraftTrainingJobState.Stopped, (await queue.WaitForCompletionAsync(id).WaitAsync(TimeSpan.FromMinutes(2))).State);
        Assert.False(host.Services.GetServices<IHostedService>().OfType<DraftTrainingService>().Single().ExecuteTask!.IsCompleted);
        await host.StopAsync();
    }

    [Fact]
    public void The_queue_checkpoint_interval_is_a_ceiling_on_each_job_s_own()
    {
        using var tmp = TestAssets.TempDir();
        using var host = Build(tmp.File("jobs"), extra: new() { ["Beagle:Training:CheckpointEverySteps"] = "3" });
        var queue = host.Services.GetRequiredService<IDraftTrainingQueue>();
        var coarse = queue.GetJob(queue.Enqueue(Tiny(tmp, tmp.File("a")) with { CheckpointEverySteps = 100 }))!;
        var fine = queue.GetJob(queue.Enqueue(Tiny(tmp, tmp.File("b")) with { CheckpointEverySteps = 2 }))!;
        Assert.Equal(3, coarse.Options.CheckpointEverySteps);
        Assert.Equal(2, fine.Options.CheckpointEverySteps);
    }

    [Theory]
    [InlineData("Beagle:Training:JobsFolder", "", "Beagle:Training:JobsFolder is required")]
    [InlineData("Beagle:Training:Device", "tpu", "Beagle:Training:Device must be auto, cpu or cuda")]
    [InlineData("Beagle:Training:CheckpointEverySteps", "0", "Beagle:Training:CheckpointEverySteps must be >= 1")]
    [InlineData("Beagle:Training:MaxFinishedJobs", "-1", "Beagle:Training:MaxFinishedJobs must be >= 0")]
    public async Task Bad_training_configuration_fails_at_start_naming_the_setting(string key, string value, string expected)
    {
        using var tmp = TestAssets.TempDir();
        using var host = Build(tmp.File("jobs"), extra: new() { [key] = value });
        var e = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.Contains(expected, e.Message);
    }

    /// <summary>Keeps "Level: message" lines of every logger.</summary>
    sealed class ListLogger : ILoggerProvider, ILogger
    {
        public List<string> Lines { get; } = [];
        public ILogger CreateLogger(string categoryName) => this;
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (Lines) Lines.Add($"{logLevel}: {formatter(state, exception)}");
        }
        public void Dispose() { }
    }

    sealed class Observer(Action<TrainingProgress> onNext, Action? onCompleted = null, Action<Exception>? onError = null) : IObserver<TrainingProgress>
    {
        public void OnNext(TrainingProgress value) => onNext(value);
        public void OnCompleted() => onCompleted?.Invoke();
        public void OnError(Exception error) => onError?.Invoke(error);
    }
}
