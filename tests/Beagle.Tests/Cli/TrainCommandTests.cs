using Beagle.Cli.Commands;
using Beagle.Tests.Infrastructure;
using Beagle.Training;
using Xunit;

namespace Beagle.Tests.Cli;

/// <summary>`beagle train --resume` and `--checkpoint-every`, as a user runs them (child processes; stories260K, a few steps).</summary>
public class TrainCommandTests
{
    /// <summary>20 stories at 64 tokens, batch 16: 2 steps per epoch; no evaluation, so each run takes seconds.</summary>
    static string[] Args(string data, string outDir) =>
        ["train", "--target", TestAssets.ModelPath, "--tokenizer", TestAssets.TokenizerPath, "--data", data, "--out", outDir,
         "--seq-len", "64", "--epochs", "2", "--window", "3", "--sim-steps", "2", "--warmup", "2", "--eval-prompts", "0"];

    static string Data(TempDir tmp)
    {
        var path = tmp.File("data.txt");
        File.WriteAllText(path, string.Join("\n\n", TextSources.SplitPlainText(File.ReadAllText(TestAssets.TinyStories)).Take(20)));
        return path;
    }

    [Fact]
    public void Resume_with_no_checkpoint_refuses_with_exit_1_and_says_where_it_looked()
    {
        using var tmp = TestAssets.TempDir();
        string outDir = tmp.File("run");

        var r = ChildProcess.Beagle([.. Args(Data(tmp), outDir), "--resume"]);

        Assert.True(r.ExitCode == 1, r.ToString());
        Assert.Contains("nothing to resume", r.Stderr);
        Assert.Contains(Path.Combine(outDir, "checkpoint"), r.Stderr.ReplaceLineEndings(""));
        Assert.False(Directory.Exists(Path.Combine(outDir, "draft")));
    }

    [Fact]
    public void Resume_says_from_which_step_and_finishes_the_run()
    {
        using var tmp = TestAssets.TempDir();
        string data = Data(tmp), outDir = tmp.File("run");
        // The first part of the run, stopped at step 2 as Ctrl+C would: the options the command itself builds.
        var settings = new TrainSettings
        {
            Data = [data], Out = outDir, SeqLen = 64, Epochs = 2, Window = 3, SimSteps = 2, Warmup = 2, EvalPrompts = 0,
        };
        var first = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer,
            settings.ToOptions(TestAssets.ModelPath, TestAssets.TokenizerPath) with { StopAfterSteps = 2 }).Train();
        Assert.Equal(2, first.CheckpointStep);

        var r = ChildProcess.Beagle([.. Args(data, outDir), "--resume"]);

        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("resuming from step 2 of 4", r.Stdout);
        Assert.Contains("done", r.Stdout);
        Assert.True(Directory.Exists(Path.Combine(outDir, "draft")));
    }

    [Fact]
    public void Checkpoint_every_sets_the_interval_and_is_validated()
    {
        using var tmp = TestAssets.TempDir();
        string data = Data(tmp), outDir = tmp.File("run");

        var bad = ChildProcess.Beagle([.. Args(data, outDir), "--checkpoint-every", "0"]);
        Assert.True(bad.ExitCode == 2, bad.ToString());
        Assert.Contains("checkpoint-every", bad.Stderr);

        var r = ChildProcess.Beagle([.. Args(data, outDir), "--epochs", "1", "--checkpoint-every", "1"]);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("checkpoint saved at step 1", r.Stdout);   // the interval's (the epoch ends at step 2)
        Assert.Contains("checkpoint saved at step 2", r.Stdout);
    }
    [Fact]
    public async Task Sigterm_checkpoints_exits_130_and_the_resumed_run_ends_with_the_uninterrupted_draft()
    {
        using var tmp = TestAssets.TempDir();
        string data = Data(tmp), stopped = tmp.File("stopped"), whole = tmp.File("whole");
        // 120 steps: long enough (seconds) that the signal, sent at step 1, lands mid-run even on a quiet machine.
        string[] Long(string outDir) => [.. Args(data, outDir), "--epochs", "60", "--checkpoint-every", "1"];

        // SIGTERM (what systemd and `docker stop` send) once the run is training: the first checkpoint says so.
        using (var p = ChildProcess.StartDotnet(Path.Combine(AppContext.BaseDirectory, "beagle.dll"), Long(stopped)))
        {
            p.StandardInput.Close();
            var stderr = p.StandardError.ReadToEndAsync();
            var stdout = new System.Text.StringBuilder();
            bool signalled = false;
            while (await p.StandardOutput.ReadLineAsync() is { } line)
            {
                stdout.AppendLine(line);
                // Exactly one SIGTERM: a second one means "terminate now" (exit 143), and the lines for steps 10-19 also
                // begin with "checkpoint saved at step 1" — a loaded machine can read them before the first signal lands.
                if (!signalled && line.Trim() == "checkpoint saved at step 1")
                {
                    signalled = true;
                    ChildProcess.Terminate(p);
                }
            }
            Assert.True(signalled, $"no checkpoint at step 1 was reported\n{stdout}");
            Assert.True(p.WaitForExit(60_000), "beagle train did not stop after SIGTERM");
            var output = $"{stdout}\n{await stderr}";
            Assert.True(p.ExitCode == 130, $"exit {p.ExitCode}\n{output}");
            Assert.Contains("stopped at step", output);
            Assert.True(File.Exists(Path.Combine(stopped, "checkpoint", "draft.safetensors")), output);
            Assert.False(Directory.Exists(Path.Combine(stopped, "draft")), "a stopped run wrote a final draft");
        }

        var resumed = ChildProcess.Beagle([.. Long(stopped), "--resume"]);
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        var uninterrupted = ChildProcess.Beagle(Long(whole));
        Assert.True(uninterrupted.ExitCode == 0, uninterrupted.ToString());
        Assert.Equal(File.ReadAllBytes(Path.Combine(whole, "draft", "draft.safetensors")), File.ReadAllBytes(Path.Combine(stopped, "draft", "draft.safetensors")));
    }
}
