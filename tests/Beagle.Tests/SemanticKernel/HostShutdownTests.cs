using System.Text.Json.Nodes;
using Beagle.Hosting.Training;
using Beagle.Tests.Infrastructure;
using Beagle.Training;
using Xunit;

namespace Beagle.Tests.SemanticKernel;

/// <summary>
/// Shutdown of a host whose draft-training job is in the middle of a step, as a whole process (ChildPrograms
/// "training-host"): the shutdown timeout (1 ms) ends long before the step does.
/// </summary>
public sealed class HostShutdownTests
{
    static JsonNode SingleJob(string jobs) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(jobs, DraftTrainingService.JobsFile)))!["jobs"]!.AsArray().Single()!;

    [Fact]
    public void A_host_whose_shutdown_timeout_ends_inside_a_training_step_exits_cleanly_and_the_next_start_resumes_from_the_checkpoint()
    {
        using var tmp = TestAssets.TempDir();
        string jobs = tmp.File("jobs"), data = tmp.File("data.txt");
        File.WriteAllText(data, string.Join("\n\n", TextSources.SplitPlainText(File.ReadAllText(TestAssets.TinyStories)).Take(200)));

        // Stop 100 ms after step 2 was reported: inside step 3 (~0.3 s), past the 1 ms timeout. Before the fix the process
        // left Main with libtorch still running on the training thread and died at exit (SIGSEGV, exit 139).
        var first = ChildPrograms.Run("training-host", jobs, data, "1", "stop-at-step", "2", "100");

        Assert.True(first.ExitCode == 0, first.ToString());
        var job = SingleJob(jobs);
        string id = (string)job["id"]!;
        Assert.Equal("Interrupted", (string?)job["state"]);
        long checkpoint = (long)JsonNode.Parse(File.ReadAllText(Path.Combine(jobs, id, "checkpoint", "state.json")))!["step"]!;
        Assert.InRange(checkpoint, 2, 8);                                        // a step boundary before the end (9 steps)
        Assert.Equal(checkpoint, (long?)job["checkpointStep"]);                  // jobs.json says where it resumes
        Assert.Equal(checkpoint, (long)job["step"]!);                            // nothing trained past the checkpoint
        Assert.Contains($"{id} Interrupted {checkpoint}", first.Stdout);         // the state StopAsync returned with

        var second = ChildPrograms.Run("training-host", jobs, data, "1", "finish");

        Assert.True(second.ExitCode == 0, second.ToString());
        job = SingleJob(jobs);
        Assert.Equal("Completed", (string?)job["state"]);
        Assert.Equal(2, (int)job["attempts"]!);
        Assert.Equal(checkpoint, (long?)job["resumedFromStep"]);
        Assert.Equal(9, (long)job["step"]!);
        Assert.Contains($"resuming from step {checkpoint}", second.Stdout);
    }
}
