using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Samples;

/// <summary>
/// The samples as a new user runs them: no environment variable, no shared folder, a fresh user cache and working
/// folder. They must work with the bundled default model, and a bad model must give one line on stderr, a non-zero exit
/// code and no stack trace. (The test project builds the samples first; see Beagle.Tests.csproj.)
/// </summary>
public class SampleTests
{
    /// <summary>The built sample, in the same configuration as this test assembly (bin/Release/net10.0 → Release).</summary>
    static string SampleDll(string name)
    {
        var testBin = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));   // .../bin/<config>/<tfm>
        string tfm = testBin.Name, config = testBin.Parent!.Name;
        var repo = testBin;
        while (repo is not null && !File.Exists(Path.Combine(repo.FullName, "Beagle.Integrations.sln"))) repo = repo.Parent;
        Assert.NotNull(repo);
        var dll = Path.Combine(repo.FullName, "samples", $"Beagle.Samples.{name}", "bin", config, tfm, $"Beagle.Samples.{name}.dll");
        Assert.True(File.Exists(dll), $"{dll} is not built (the test project builds the samples before itself)");
        return dll;
    }

    static ProcessResult Run(string sample, string[] args)
    {
        using var home = TestAssets.TempDir();
        return ChildProcess.Dotnet(SampleDll(sample), args, new Dictionary<string, string?>
        {
            ["BEAGLE_MODELS"] = null, ["BEAGLE_DATA"] = null, ["BEAGLE_SHARED"] = null,
            ["XDG_CACHE_HOME"] = home.File("cache"), ["HOME"] = home.Path,
        }, workingDirectory: home.Path, timeout: TimeSpan.FromMinutes(3));
    }

    static void NoStackTrace(ProcessResult r) =>
        Assert.False(r.Stdout.Contains("   at ") || r.Stderr.Contains("   at ") || r.Stderr.Contains("Exception:"), $"a stack trace or exception dump:\n{r}");

    public static TheoryData<string, string[]> ShortRuns => new()
    {
        { "Chat", ["--prompt", "Tom found a red ball in the garden.", "--max-tokens", "8"] },
        { "Agent", ["--prompt", "Tom found a red ball in the garden.", "--max-tokens", "8"] },
        { "Worker", ["--once", "--Beagle:DefaultMaxTokens=8"] },
        { "MLNet", [] },
    };

    [Theory]
    [MemberData(nameof(ShortRuns))]
    public void Each_sample_runs_with_the_bundled_model_and_no_environment(string sample, string[] args)
    {
        var r = Run(sample, args);

        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.False(string.IsNullOrWhiteSpace(r.Stdout), r.ToString());
        NoStackTrace(r);
        Assert.DoesNotContain("NaN", r.Stdout + r.Stderr);
        Assert.DoesNotContain("fail:", r.Stdout + r.Stderr);
    }

    [Fact]
    public async Task The_worker_stops_promptly_on_SIGTERM_while_it_waits_for_a_prompt()
    {
        using var home = TestAssets.TempDir();
        var data = home.File("data.txt");
        File.WriteAllText(data, string.Join("\n\n", Beagle.Training.TextSources.SplitPlainText(File.ReadAllText(TestAssets.TinyStories)).Take(100)));
        using var p = ChildProcess.StartDotnet(SampleDll("Worker"),
            ["--target", TestAssets.ModelPath, "--tokenizer", TestAssets.TokenizerPath, "--no-draft", "--data", data],
            new Dictionary<string, string?> { ["BEAGLE_SHARED"] = null, ["XDG_CACHE_HOME"] = home.File("cache"), ["HOME"] = home.Path },
            workingDirectory: home.Path);
        var stderr = new System.Text.StringBuilder();
        using var waiting = new ManualResetEventSlim();
        p.ErrorDataReceived += (_, e) =>
        {
            lock (stderr) stderr.AppendLine(e.Data);
            if (e.Data?.Contains("runs in the background") == true) waiting.Set();   // then it reads standard input, which stays open
        };
        p.BeginErrorReadLine();
        var stdout = p.StandardOutput.ReadToEndAsync();
        try
        {
            Assert.True(waiting.Wait(TimeSpan.FromMinutes(2)), $"the worker never got to its prompt loop:\n{stderr}");
            ChildProcess.Terminate(p);
            // The host's default shutdown timeout is 30 s: a prompt loop blind to the stopping token held shutdown that long.
            Assert.True(p.WaitForExit(TimeSpan.FromSeconds(20)), $"the worker did not stop within 20 s of SIGTERM:\n{stderr}");
        }
        finally { if (!p.HasExited) p.Kill(entireProcessTree: true); }
        p.WaitForExit();
        var result = new ProcessResult(p.ExitCode, await stdout, stderr.ToString());
        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Contains("stopping: the training job keeps its checkpoint", result.Stdout);
        NoStackTrace(result);
    }

    [Theory]
    [InlineData("Chat", "--prompt", "Tom")]
    [InlineData("Agent", "--prompt", "Tom")]
    [InlineData("Worker", "--once")]
    [InlineData("MLNet")]
    public void A_garbage_target_gives_one_line_on_stderr_and_a_non_zero_exit(string sample, params string[] args)
    {
        using var dir = TestAssets.TempDir();
        var garbage = dir.File("garbage.bin");
        File.WriteAllBytes(garbage, Enumerable.Range(0, 4096).Select(i => (byte)(i * 131 + 7)).ToArray());
        var tokenizer = Path.Combine(AppContext.BaseDirectory, "models", "stories5M", "tok512.bin");

        var r = Run(sample, [.. args, "--target", garbage, "--tokenizer", tokenizer]);

        Assert.True(r.ExitCode != 0, r.ToString());
        Assert.Equal("", r.Stdout);
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("error: ", line);
        Assert.Contains("garbage.bin", line);
        NoStackTrace(r);
    }
}
