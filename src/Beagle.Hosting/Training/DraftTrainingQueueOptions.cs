using Microsoft.Extensions.Options;

namespace Beagle.Hosting.Training;

/// <summary>Settings of the background draft-training service (configuration section "Beagle:Training" by convention).</summary>
public sealed class DraftTrainingQueueOptions
{
    public const string SectionName = "Beagle:Training";

    /// <summary>Folder of <c>jobs.json</c> and of each job's default output folder (<c>&lt;JobsFolder&gt;/&lt;job id&gt;</c>). Required; created if missing.</summary>
    public string JobsFolder { get; set; } = "";
    /// <summary>Where training runs: cpu (default), auto or cuda[:N]. Each job loads its own copy of the target.</summary>
    public string Device { get; set; } = "cpu";
    /// <summary>
    /// The longest interval between a job's checkpoints, in steps (null: each job's TrainingOptions.CheckpointEverySteps).
    /// A job that asks for more frequent checkpoints keeps its own. Host shutdown loses no step either way (the running
    /// job checkpoints where it stops); this bounds what a crash or a kill can lose.
    /// </summary>
    public int? CheckpointEverySteps { get; set; }
    /// <summary>Finished jobs (completed, stopped, failed, cancelled) kept in jobs.json, newest first; older ones are dropped. Unfinished jobs are always kept.</summary>
    public int MaxFinishedJobs { get; set; } = 100;

    /// <summary>The problems with these options, each naming its setting (prefixed, e.g. "Beagle:Training:").</summary>
    public IReadOnlyList<string> Problems(string prefix = "")
    {
        var p = new List<string>();
        if (string.IsNullOrWhiteSpace(JobsFolder)) p.Add($"{prefix}{nameof(JobsFolder)} is required: the folder for jobs.json and the jobs' output folders");
        else if (File.Exists(JobsFolder)) p.Add($"{prefix}{nameof(JobsFolder)}: '{JobsFolder}' is a file, not a folder");
        if (CheckpointEverySteps is { } every && every < 1) p.Add($"{prefix}{nameof(CheckpointEverySteps)} must be >= 1 (or unset), got {every}");
        if (MaxFinishedJobs < 0) p.Add($"{prefix}{nameof(MaxFinishedJobs)} must be >= 0, got {MaxFinishedJobs}");
        var device = (Device ?? "").Trim().ToLowerInvariant();
        if (!(device is "auto" or "cpu" or "cuda" || (device.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(device[5..], out var n) && n >= 0)))
            p.Add($"{prefix}{nameof(Device)} must be auto, cpu or cuda[:N], got '{Device}'");
        return p;
    }
}

internal sealed class DraftTrainingQueueOptionsValidator(string prefix) : IValidateOptions<DraftTrainingQueueOptions>
{
    public ValidateOptionsResult Validate(string? name, DraftTrainingQueueOptions options)
    {
        var problems = options.Problems(prefix);
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}
