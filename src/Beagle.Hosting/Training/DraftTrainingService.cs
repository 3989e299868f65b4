using System.Text.Json;
using System.Text.Json.Serialization;
using Beagle.Checkpoints;
using Beagle.Runtime;
using Beagle.Training;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using ServedModel = Beagle.SemanticKernel.BeagleModelOptions;

namespace Beagle.Hosting.Training;

/// <summary>
/// The hosted service behind <see cref="IDraftTrainingQueue"/>: runs queued jobs one at a time, each on its own thread
/// with its own copy of the target (the serving engine is never touched, architecture.md "Threading"). Host shutdown
/// cancels the running job; the core trainer stops at the next step boundary (checked inside long steps too), saves a
/// checkpoint there, the job is recorded as Interrupted in jobs.json with that step, and only then are its tensors
/// freed, on the training thread. <see cref="StopAsync"/> waits for all of that even past HostOptions.ShutdownTimeout:
/// returning earlier would let the process exit while libtorch still runs on the training thread (a crash at exit,
/// SIGSEGV). The wait is one part of a step plus a save; the next start resumes the job with <see cref="TrainingOptions.Resume"/>.
/// </summary>
public sealed class DraftTrainingService : BackgroundService, IDraftTrainingQueue
{
    public const string JobsFile = "jobs.json";

    static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter() },
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    readonly IOptions<DraftTrainingQueueOptions> _options;
    readonly IOptions<ServedModel>? _served;
    readonly ILogger _logger;
    readonly object _gate = new();
    readonly SemaphoreSlim _wake = new(0);
    List<JobRecord>? _jobs;   // loaded on first use (not in the constructor: options are validated at host start)
    volatile bool _stopping;

    public DraftTrainingService(IOptions<DraftTrainingQueueOptions> options, ILogger<DraftTrainingService> logger, IOptions<ServedModel>? served = null)
    {
        _options = options; _logger = logger; _served = served;
    }

    public event EventHandler<DraftTrainingJob>? JobChanged;

    string Folder => _options.Value.JobsFolder;

    // ---- the queue ----

    public string Enqueue(TrainingOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        string id = DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", System.Globalization.CultureInfo.InvariantCulture) + "-" + Guid.NewGuid().ToString("N")[..6];
        var served = _served?.Value;
        var o = options with
        {
            OutputDir = Path.GetFullPath(string.IsNullOrWhiteSpace(options.OutputDir) ? Path.Combine(Folder, id) : options.OutputDir),
            TargetPath = options.TargetPath ?? (string.IsNullOrWhiteSpace(served?.TargetPath) ? null : served.TargetPath),
            TokenizerPath = options.TokenizerPath ?? (options.TargetPath is null ? served?.TokenizerPath : null),
            // The queue's interval is a ceiling: a job that asks for more frequent checkpoints keeps its own.
            CheckpointEverySteps = _options.Value.CheckpointEverySteps is { } every ? Math.Min(every, options.CheckpointEverySteps) : options.CheckpointEverySteps,
        };
        if (string.IsNullOrWhiteSpace(o.TargetPath))
            throw new ArgumentException("TargetPath: the target to train a draft for is required (or register the served model with AddBeagle)", nameof(options));
        // A known model (e.g. the default stories5M) is recorded as its files, so that a job resumed later trains on
        // exactly what it started on.
        var files = ModelLoader.Resolve(new ModelSpec { Target = o.TargetPath, Tokenizer = o.TokenizerPath, NoDraft = true });
        o = o with { TargetPath = files.Target, TokenizerPath = files.Tokenizer };
        o.Validate();
        lock (_gate)
        {
            var jobs = Jobs();
            if (jobs.FirstOrDefault(j => !j.IsFinished && string.Equals(j.Options.OutputDir, o.OutputDir, StringComparison.Ordinal)) is { } other)
                throw new ArgumentException($"out: job {other.Id} (unfinished) already writes to '{o.OutputDir}'; give each job its own output folder", nameof(options));
            var job = new JobRecord { Id = id, State = DraftTrainingJobState.Queued, Options = o, EnqueuedAt = DateTimeOffset.UtcNow };
            jobs.Add(job);
            Save();
            Changed(job);
        }
        _logger.LogInformation("draft training job {Job} queued: {Arch} draft for {Target} into {Out}", id, o.Architecture, o.TargetPath, o.OutputDir);
        _wake.Release();
        return id;
    }

    public DraftTrainingJob? GetJob(string jobId)
    {
        lock (_gate) return Find(jobId)?.Snapshot();
    }

    public IReadOnlyList<DraftTrainingJob> GetJobs()
    {
        lock (_gate) return Jobs().Select(j => j.Snapshot()).ToList();
    }

    public bool Cancel(string jobId)
    {
        lock (_gate)
        {
            var job = Find(jobId);
            if (job is null || job.IsFinished) return false;
            job.CancelRequested = true;
            if (job.State == DraftTrainingJobState.Running) { job.Cts?.Cancel(); return true; }   // finished by the runner
            Finish(job, DraftTrainingJobState.Cancelled, error: "cancelled before it started");
            return true;
        }
    }

    public IObservable<TrainingProgress> Observe(string jobId)
    {
        lock (_gate) if (Find(jobId) is null) throw new ArgumentException($"no draft training job '{jobId}'", nameof(jobId));
        return new JobObservable(this, jobId);
    }

    public async Task<DraftTrainingJob> WaitForCompletionAsync(string jobId, CancellationToken cancellationToken = default)
    {
        Task<DraftTrainingJob> done;
        lock (_gate)
        {
            var job = Find(jobId) ?? throw new ArgumentException($"no draft training job '{jobId}'", nameof(jobId));
            if (job.IsFinished) return job.Snapshot();
            if (_stopping) throw new OperationCanceledException($"the host is stopping; job {jobId} resumes at the next start");
            done = (job.Done ??= new(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
        }
        return await done.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    // ---- the worker ----

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        await Task.Yield();   // let host start continue
        lock (_gate)
        {
            foreach (var j in Jobs().Where(j => j.State == DraftTrainingJobState.Queued && j.Attempts > 0))
                _logger.LogInformation("draft training job {Job} was interrupted at step {Step}; it resumes from its checkpoint", j.Id, j.Step);
        }
        using var stopping = stoppingToken.Register(() => _stopping = true);
        while (!stoppingToken.IsCancellationRequested)
        {
            JobRecord? next;
            lock (_gate) next = Jobs().FirstOrDefault(j => j.State == DraftTrainingJobState.Queued);
            if (next is null)
            {
                try { await _wake.WaitAsync(stoppingToken).ConfigureAwait(false); }
                catch (OperationCanceledException) { break; }
                continue;
            }
            await RunAsync(next, stoppingToken).ConfigureAwait(false);
        }
        lock (_gate)
            foreach (var j in Jobs().Where(j => !j.IsFinished)) j.Abandon();   // waiters of this host learn it stopped
    }

    async Task RunAsync(JobRecord job, CancellationToken stoppingToken)
    {
        TrainingOptions options;
        CancellationToken ct;
        lock (_gate)
        {
            // A job that ran before continues from its checkpoint (from the start when it stopped before its first one).
            // Looking also repairs a checkpoint whose save was interrupted (DraftTrainer.FindCheckpoint).
            TrainingCheckpoint? checkpoint;
            try { checkpoint = DraftTrainer.FindCheckpoint(job.Options.OutputDir); }
            catch (InvalidDataException e)
            {
                Finish(job, DraftTrainingJobState.Failed, error: e.Message, exception: e);
                return;
            }
            bool resume = job.Options.Resume || (job.Attempts > 0 && checkpoint is not null);
            options = job.Options with { Resume = resume };
            job.ResumedFromStep = resume ? checkpoint?.Step : null;
            job.Attempts++;
            job.State = DraftTrainingJobState.Running;
            job.StartedAt = DateTimeOffset.UtcNow;
            job.Cts = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
            ct = job.Cts.Token;
            Save();
            Changed(job);
        }
        _logger.LogInformation("draft training job {Job} started (attempt {Attempt}{Resume})", job.Id, job.Attempts,
            job.ResumedFromStep is { } s ? $", resuming from step {s}" : "");
        var progress = new SyncProgress(p => OnProgress(job, p));
        string device = _options.Value.Device;
        // The whole run happens on the training thread, its outcome in jobs.json included, before that thread frees the
        // job's target and draft: nothing of it is left running or freed elsewhere when this task completes.
        await Task.Factory.StartNew(() => Train(job, options, device, progress, ct, stoppingToken),
            CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).ConfigureAwait(false);
        var status = GetJob(job.Id)!;
        _logger.LogInformation("draft training job {Job}: {State} at step {Step}/{Total}{Draft}", job.Id, status.State, status.Step, status.TotalSteps,
            status.DraftDir is { } d ? $", draft in {d}" : "");
    }

    /// <summary>Runs one job on the calling (training) thread and records its outcome; then frees its target.</summary>
    void Train(JobRecord job, TrainingOptions options, string device, IProgress<TrainingProgress> progress, CancellationToken ct, CancellationToken stoppingToken)
    {
        LoadedTarget? target = null;
        try
        {
            target = ModelLoader.LoadTarget(new ModelSpec { Target = options.TargetPath!, Tokenizer = options.TokenizerPath, Device = device, NoDraft = true });
            var result = DraftTrainer.Create(target.Model, target.Tokenizer, options).Train(progress, ct);
            lock (_gate)
            {
                job.Step = result.Steps;
                job.CheckpointStep = result.CheckpointStep ?? job.CheckpointStep;
                if (result.Completed) { job.DraftDir = result.DraftDir; Finish(job, DraftTrainingJobState.Completed); }
                else Stopped(job, stoppingToken, $"stopped at step {result.Steps} by StopAfterSteps; checkpoint in {Path.Combine(result.OutputDir, "checkpoint")}");
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            lock (_gate) Stopped(job, stoppingToken, "stopped");   // before its first step (data, features): nothing to checkpoint yet
        }
        catch (Exception e)
        {
            _logger.LogError(e, "draft training job {Job} failed", job.Id);
            lock (_gate) Finish(job, DraftTrainingJobState.Failed, error: $"{e.GetType().Name}: {e.Message}", exception: e);
        }
        finally
        {
            target?.Dispose();
            lock (_gate) { job.Cts?.Dispose(); job.Cts = null; }
        }
    }

    /// <summary>
    /// Stops the queue: the running job stops at its next step boundary and checkpoints (see the class summary). Waits for
    /// that even when <paramref name="cancellationToken"/> (the host's shutdown timeout) fires first, and says so.
    /// </summary>
    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken).ConfigureAwait(false);   // cancels the stopping token; returns at the timeout
        if (ExecuteTask is { IsCompleted: false } running)
        {
            string? id;
            lock (_gate) id = _jobs?.FirstOrDefault(j => j.State == DraftTrainingJobState.Running)?.Id;
            _logger.LogWarning("the host's shutdown timeout ended before draft training job {Job} reached a step boundary; waiting for it to " +
                "stop there and save its checkpoint (exiting now would free its tensors while libtorch still uses them)", id);
            try { await running.ConfigureAwait(false); }
            catch (Exception e) { _logger.LogError(e, "the draft training queue failed while stopping"); }
        }
    }

    /// <summary>A run that returned or threw without finishing: cancelled by the user, interrupted by shutdown, or StopAfterSteps. Under the lock.</summary>
    void Stopped(JobRecord job, CancellationToken stoppingToken, string reason)
    {
        if (job.CancelRequested) Finish(job, DraftTrainingJobState.Cancelled, error: "cancelled");
        else if (stoppingToken.IsCancellationRequested)
        {
            job.State = DraftTrainingJobState.Interrupted;
            Save();
            Changed(job);
            job.Abandon();
        }
        else Finish(job, DraftTrainingJobState.Stopped, error: reason);
    }

    void OnProgress(JobRecord job, TrainingProgress p)
    {
        IObserver<TrainingProgress>[] observers;
        lock (_gate)
        {
            job.LastProgress = p;
            if (p.Message is null || p.Step > 0) { job.Step = p.Step; job.TotalSteps = p.TotalSteps; }   // a note has no step figures
            if (p.CheckpointStep is { } saved && saved != job.CheckpointStep)
            {
                job.CheckpointStep = saved;
                Save();   // a crash after this point resumes from here, and jobs.json says so
            }
            observers = [.. job.Observers];
        }
        if (p.Message is null) Beagle.SemanticKernel.BeagleMetrics.RecordTraining(job.Id, p.Loss, p.TokensPerSecond);
        if (p.Message is null)
            _logger.LogInformation("draft training job {Job}: epoch {Epoch}/{Epochs} stage {Stage} step {Step}/{Total} loss {Loss:F4}",
                job.Id, p.Epoch, p.Epochs, p.Stage, p.Step, p.TotalSteps, p.Loss);
        else _logger.LogInformation("draft training job {Job}: {Message}", job.Id, p.Message);
        foreach (var o in observers)
            try { o.OnNext(p); }
            catch (Exception e) { _logger.LogWarning(e, "a progress observer of job {Job} threw; training goes on", job.Id); }
    }

    /// <summary>Moves a job to a final state, persists it and tells waiters and observers. Under the lock.</summary>
    void Finish(JobRecord job, DraftTrainingJobState state, string? error = null, Exception? exception = null)
    {
        job.State = state;
        job.Error = error;
        job.FinishedAt = DateTimeOffset.UtcNow;
        Save();
        Changed(job);
        var snapshot = job.Snapshot();
        var observers = job.Observers.ToArray();
        job.Observers.Clear();
        foreach (var o in observers)
            try
            {
                if (state == DraftTrainingJobState.Completed) o.OnCompleted();
                else o.OnError(exception ?? (state == DraftTrainingJobState.Cancelled ? new OperationCanceledException($"job {job.Id} was cancelled") : new InvalidOperationException($"job {job.Id}: {error}")));
            }
            catch (Exception e) { _logger.LogWarning(e, "a progress observer of job {Job} threw", job.Id); }
        // Waiters resume only after every observer has been told (they may rely on the observers' state).
        job.Done?.TrySetResult(snapshot);
    }

    void Changed(JobRecord job)
    {
        var handler = JobChanged;
        if (handler is null) return;
        var snapshot = job.Snapshot();
        try { handler(this, snapshot); }
        catch (Exception e) { _logger.LogWarning(e, "a JobChanged handler threw for job {Job}", job.Id); }
    }

    // ---- jobs.json ----

    JobRecord? Find(string jobId) => Jobs().FirstOrDefault(j => j.Id == jobId);

    /// <summary>
    /// The jobs, read from jobs.json on first use; unfinished ones are queued again (they resume). A jobs.json that cannot
    /// be read is moved aside (jobs.json.corrupt-*) with a warning and the queue starts empty: the host keeps serving,
    /// and the jobs' run folders, checkpoints included, are untouched (enqueue a job again with Resume to continue it).
    /// Under the lock.
    /// </summary>
    List<JobRecord> Jobs()
    {
        if (_jobs is not null) return _jobs;
        Directory.CreateDirectory(Folder);
        string path = Path.Combine(Folder, JobsFile);
        var jobs = new List<JobRecord>();
        if (File.Exists(path))
        {
            try
            {
                jobs = JsonSerializer.Deserialize<JobsDocument>(File.ReadAllText(path), Json)?.Jobs ?? [];
                if (jobs.Any(j => j is null || j.Id is null || j.Options is null)) throw new JsonException("a job without id or options");
            }
            catch (JsonException e)
            {
                string aside = path + ".corrupt-" + DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", System.Globalization.CultureInfo.InvariantCulture) + "-" + Guid.NewGuid().ToString("N")[..4];
                File.Move(path, aside);
                _logger.LogWarning("{Path} is not a valid Beagle jobs file ({Error}); moved it to {Aside} and started with no jobs", path, e.Message, aside);
                jobs = [];
            }
            foreach (var j in jobs.Where(j => j.State is DraftTrainingJobState.Running or DraftTrainingJobState.Interrupted))
                j.State = DraftTrainingJobState.Queued;
        }
        return _jobs = jobs;
    }

    /// <summary>
    /// Writes jobs.json atomically (temporary file, then rename), keeping every unfinished job and the latest
    /// <see cref="DraftTrainingQueueOptions.MaxFinishedJobs"/> finished ones. Under the lock.
    /// </summary>
    void Save()
    {
        var jobs = Jobs();
        int excess = jobs.Count(j => j.IsFinished) - _options.Value.MaxFinishedJobs;
        if (excess > 0)
        {
            var oldest = jobs.Where(j => j.IsFinished).OrderBy(j => j.FinishedAt ?? j.EnqueuedAt).Take(excess).ToHashSet();
            jobs.RemoveAll(oldest.Contains);
        }
        string path = Path.Combine(Folder, JobsFile), tmp = path + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp";
        File.WriteAllText(tmp, JsonSerializer.Serialize(new JobsDocument { Jobs = jobs }, Json));
        File.Move(tmp, path, overwrite: true);
    }

    public override void Dispose()
    {
        base.Dispose();
        _wake.Dispose();
    }

    sealed class JobsDocument
    {
        public int Version { get; set; } = 1;
        public List<JobRecord> Jobs { get; set; } = [];
    }

    /// <summary>A job as persisted, plus its in-process state (ignored by JSON).</summary>
    sealed class JobRecord
    {
        public required string Id { get; set; }
        public DraftTrainingJobState State { get; set; }
        public required TrainingOptions Options { get; set; }
        public DateTimeOffset EnqueuedAt { get; set; }
        public DateTimeOffset? StartedAt { get; set; }
        public DateTimeOffset? FinishedAt { get; set; }
        public int Attempts { get; set; }
        public long? ResumedFromStep { get; set; }
        public long? CheckpointStep { get; set; }
        public long Step { get; set; }
        public long TotalSteps { get; set; }
        public string? DraftDir { get; set; }
        public string? Error { get; set; }

        [JsonIgnore] public TrainingProgress? LastProgress { get; set; }
        [JsonIgnore] public List<IObserver<TrainingProgress>> Observers { get; } = [];
        [JsonIgnore] public TaskCompletionSource<DraftTrainingJob>? Done { get; set; }
        [JsonIgnore] public CancellationTokenSource? Cts { get; set; }
        [JsonIgnore] public bool CancelRequested { get; set; }
        [JsonIgnore] public bool IsFinished => Snapshot().IsFinished;

        public DraftTrainingJob Snapshot() => new(Id, State, Options, EnqueuedAt, StartedAt, FinishedAt, Attempts, ResumedFromStep, Step,
            TotalSteps, DraftDir, Error, LastProgress) { CheckpointStep = CheckpointStep };

        /// <summary>This host stops before the job finished: waiters and observers are told (the job itself resumes at the next start).</summary>
        public void Abandon()
        {
            Done?.TrySetCanceled();
            Done = null;
            var observers = Observers.ToArray();
            Observers.Clear();
            foreach (var o in observers)
                try { o.OnError(new OperationCanceledException($"the host stopped; draft training job {Id} resumes from its checkpoint at the next start")); }
                catch (Exception) { /* an observer's failure must not block shutdown */ }
        }
    }

    sealed class JobObservable(DraftTrainingService service, string jobId) : IObservable<TrainingProgress>
    {
        public IDisposable Subscribe(IObserver<TrainingProgress> observer)
        {
            ArgumentNullException.ThrowIfNull(observer);
            DraftTrainingJob snapshot;
            lock (service._gate)
            {
                var job = service.Find(jobId)!;
                if (!job.IsFinished && !(service._stopping && job.State != DraftTrainingJobState.Running))
                {
                    job.Observers.Add(observer);
                    return new Unsubscriber(() => { lock (service._gate) job.Observers.Remove(observer); });
                }
                snapshot = job.Snapshot();
            }
            // Already over: complete the observer at once, as Finish would have.
            if (snapshot.State == DraftTrainingJobState.Completed) observer.OnCompleted();
            else if (!snapshot.IsFinished) observer.OnError(new OperationCanceledException($"the host is stopping; job {jobId} resumes at the next start"));
            else observer.OnError(snapshot.State == DraftTrainingJobState.Cancelled
                ? new OperationCanceledException($"job {jobId} was cancelled")
                : new InvalidOperationException($"job {jobId}: {snapshot.Error}"));
            return new Unsubscriber(() => { });
        }
    }

    sealed class Unsubscriber(Action dispose) : IDisposable { public void Dispose() => dispose(); }

    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress> { public void Report(TrainingProgress value) => report(value); }
}
