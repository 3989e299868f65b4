using Beagle.Training;

namespace Beagle.Hosting.Training;

/// <summary>
/// Draft-training jobs run one at a time by a hosted background service (<see cref="DraftTrainingService"/>). Jobs are
/// persisted in <c>jobs.json</c> in <see cref="DraftTrainingQueueOptions.JobsFolder"/> (unfinished jobs and the latest
/// <see cref="DraftTrainingQueueOptions.MaxFinishedJobs"/> finished ones): a job interrupted by host shutdown stops at a
/// step boundary, saves its checkpoint and continues from it (TrainingOptions.Resume) at the next start, so stopping the
/// host loses no finished step.
/// </summary>
public interface IDraftTrainingQueue
{
    /// <summary>
    /// Queues a training run and returns its job id. A blank <see cref="TrainingOptions.OutputDir"/> gets
    /// <c>JobsFolder/&lt;id&gt;</c>; a null TargetPath/TokenizerPath the served model's (Beagle:TargetPath / TokenizerPath).
    /// The options are validated here (ArgumentException naming the option); two unfinished jobs never share an output folder.
    /// </summary>
    string Enqueue(TrainingOptions options);

    /// <summary>The job's current status, or null for an unknown id.</summary>
    DraftTrainingJob? GetJob(string jobId);

    /// <summary>All jobs known to this folder, oldest first.</summary>
    IReadOnlyList<DraftTrainingJob> GetJobs();

    /// <summary>Cancels a queued or running job (the trainer saves its checkpoint; the job is not resumed). False if it already finished.</summary>
    bool Cancel(string jobId);

    /// <summary>
    /// The job's progress reports. Observers are called on the training thread (keep them short); they complete when the
    /// job completes, and get OnError for a failed job (the error), a cancelled one, and one interrupted by host
    /// shutdown (OperationCanceledException; that job resumes at the next start).
    /// </summary>
    IObservable<TrainingProgress> Observe(string jobId);

    /// <summary>
    /// Completes with the job's status once it completed, failed, stopped or was cancelled. Throws OperationCanceledException
    /// when <paramref name="cancellationToken"/> fires or the host stops first (the job then resumes at the next start).
    /// </summary>
    Task<DraftTrainingJob> WaitForCompletionAsync(string jobId, CancellationToken cancellationToken = default);

    /// <summary>Raised on every state change of a job (queued, running, interrupted, completed, ...).</summary>
    event EventHandler<DraftTrainingJob>? JobChanged;
}

public enum DraftTrainingJobState
{
    /// <summary>Waiting for the service (also a job restored from jobs.json at start).</summary>
    Queued,
    Running,
    /// <summary>Stopped by host shutdown at a step boundary with its checkpoint saved (<see cref="DraftTrainingJob.CheckpointStep"/>); resumed at the next start.</summary>
    Interrupted,
    /// <summary>Finished: the draft is in <see cref="DraftTrainingJob.DraftDir"/>.</summary>
    Completed,
    /// <summary>Stopped early by TrainingOptions.StopAfterSteps; the checkpoint is kept (enqueue again with Resume to go on).</summary>
    Stopped,
    Failed,
    Cancelled,
}

/// <summary>A snapshot of a job's status.</summary>
/// <param name="Attempts">How many times the job was started (more than one after a resume).</param>
/// <param name="ResumedFromStep">The checkpoint step the latest attempt continued from, if it resumed.</param>
/// <param name="Step">The last reported global step.</param>
public sealed record DraftTrainingJob(
    string Id, DraftTrainingJobState State, TrainingOptions Options, DateTimeOffset EnqueuedAt, DateTimeOffset? StartedAt,
    DateTimeOffset? FinishedAt, int Attempts, long? ResumedFromStep, long Step, long TotalSteps, string? DraftDir, string? Error,
    TrainingProgress? LastProgress)
{
    public bool IsFinished => State is DraftTrainingJobState.Completed or DraftTrainingJobState.Stopped or DraftTrainingJobState.Failed or DraftTrainingJobState.Cancelled;

    /// <summary>The step of the job's latest checkpoint on disk, where a restart resumes; null before its first checkpoint.</summary>
    public long? CheckpointStep { get; init; }
}
