using System.Text.Json;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Cli;

/// <summary>
/// `beagle` as a user runs it (a child process): standard output carries only the product (the text, or exactly one
/// JSON document), status goes to standard error, and failures are one sentence without the code's vocabulary.
/// </summary>
public class FrontDoorTests
{
    static string[] Stories260K => ["--target", TestAssets.ModelPath, "--tokenizer", TestAssets.TokenizerPath];
    static string BundledDraft => Path.Combine(AppContext.BaseDirectory, "models", "stories260K", "beagle");

    [Fact]
    public void Generate_prints_the_prompt_and_completion_on_stdout_and_the_summary_on_stderr()
    {
        var r = ChildProcess.Beagle(["generate", .. Stories260K, "--prompt", "Once upon a time", "--max-tokens", "8"]);

        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.StartsWith("Once upon a time", r.Stdout);
        Assert.True(r.Stdout.Length > "Once upon a time".Length + 8, r.ToString());
        Assert.DoesNotContain("tokens/s", r.Stdout);
        Assert.Contains("8 tokens", r.Stderr);
        Assert.Contains("tokens/s", r.Stderr);
    }

    [Fact]
    public void Generate_json_is_exactly_one_json_document_on_stdout_with_status_on_stderr()
    {
        using var cache = TestAssets.TempDir();   // a fresh user cache: the tree budget is measured, which says so on stderr
        var r = ChildProcess.Dotnet(Path.Combine(AppContext.BaseDirectory, "beagle.dll"),
            ["generate", .. Stories260K, "--draft", BundledDraft, "--prompt", "Tom", "--max-tokens", "8", "--json"],
            new Dictionary<string, string?> { ["XDG_CACHE_HOME"] = cache.Path });

        Assert.True(r.ExitCode == 0, r.ToString());
        using var doc = JsonDocument.Parse(r.Stdout);   // throws on anything before or after the one document
        Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
        Assert.Equal(8, doc.RootElement.GetProperty("new_tokens").GetInt32());
        Assert.Equal("Tom", doc.RootElement.GetProperty("prompt").GetString());
        Assert.False(string.IsNullOrEmpty(doc.RootElement.GetProperty("text").GetString()));
        Assert.Contains("tree budget", r.Stderr);
        Assert.DoesNotContain("{", r.Stderr);
    }

    [Fact]
    public void Generate_with_no_new_tokens_reports_no_acceptance_length()
    {
        var r = ChildProcess.Beagle(["generate", .. Stories260K, "--draft", BundledDraft, "--tree-tokens", "4", "--tree-depth", "3", "--tree-topk", "1",
            "--prompt", "Tom", "--max-tokens", "0"]);

        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal("Tom", r.Stdout.TrimEnd());
        Assert.Contains("0 tokens", r.Stderr);
        Assert.Contains("nothing decoded", r.Stderr);
        Assert.DoesNotContain("acceptance length", r.Stderr);
    }

    [Fact]
    public void A_prompt_longer_than_the_context_fails_with_one_sentence_and_an_empty_stdout()
    {
        var prompt = string.Join(' ', Enumerable.Repeat("the cat sat on the mat.", 200));   // ~1,400 tokens; the context is 512
        var r = ChildProcess.Beagle(["generate", .. Stories260K, "--prompt", prompt, "--max-tokens", "4"]);

        Assert.Equal(1, r.ExitCode);
        Assert.Equal("", r.Stdout);   // the prompt is not echoed before generation succeeds
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("context is 512", line);
        Assert.DoesNotContain("Parameter", line);
        Assert.DoesNotContain("promptIds", line);
    }

    [Fact]
    public void Redirected_help_is_not_wrapped_at_80_columns()
    {
        var r = ChildProcess.Beagle("generate", "--help");

        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains(r.Stdout.Split('\n'), l => l.Trim() == "beagle generate --target ./Llama-3.2-1B --prompt \"The capital of France is\" --json");
    }

    [Fact]
    public void Eval_draft_without_a_draft_for_a_target_path_says_what_is_needed()
    {
        using var dir = TestAssets.TempDir();
        File.WriteAllText(dir.File("heldout.txt"), "Once upon a time there was a cat.\n");
        var r = ChildProcess.Beagle(["eval-draft", .. Stories260K, "--data", dir.File("heldout.txt")]);

        Assert.Equal(2, r.ExitCode);
        Assert.Equal("", r.Stdout);
        Assert.Contains("--draft DIR is required", r.Stderr);
    }

    [Fact]
    public void A_tree_budget_that_cannot_hold_its_tokens_is_refused_with_exit_2_naming_the_options()
    {
        // Once silently clamped to a 4-token chain; now a usage error before any model is loaded.
        var r = ChildProcess.Beagle(["generate", .. Stories260K, "--prompt", "Tom", "--tree-tokens", "16", "--tree-depth", "3", "--tree-topk", "1"]);

        Assert.Equal(2, r.ExitCode);
        Assert.Equal("", r.Stdout);
        Assert.Contains("--tree-tokens 16", r.Stderr);
        Assert.Contains("at most 4 tokens", r.Stderr);
    }
}
