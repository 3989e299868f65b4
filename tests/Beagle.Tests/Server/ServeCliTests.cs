using System.Text.Json;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Server;

/// <summary>`beagle load-test` and `beagle serve` as a user runs them (child processes).</summary>
public sealed class ServeCliTests
{
    static string[] Stories260K => ["--target", TestAssets.ModelPath, "--tokenizer", TestAssets.TokenizerPath, "--draft", ServerFixture.Draft];

    [Fact]
    public void Load_test_runs_its_own_loopback_server_and_prints_one_json_document_of_every_level()
    {
        // Two workers: concurrent answers come from both, and each must equal its prompt's answer alone.
        var r = ChildProcess.Beagle(["load-test", .. Stories260K, "--requests", "6", "--concurrency", "1,3", "--max-tokens", "8", "--workers", "2", "--json"]);

        Assert.True(r.ExitCode == 0, r.ToString());
        using var doc = JsonDocument.Parse(r.Stdout);
        var levels = doc.RootElement.GetProperty("levels");
        Assert.Equal([1, 3], levels.EnumerateArray().Select(l => l.GetProperty("concurrency").GetInt32()));
        foreach (var l in levels.EnumerateArray())
        {
            Assert.Equal(6, l.GetProperty("requests").GetInt32());
            Assert.Equal(0, l.GetProperty("errors").GetInt32());
            Assert.Equal(48, l.GetProperty("completion_tokens").GetInt64());   // 6 requests x 8 tokens, counted from each response's usage
            Assert.True(l.GetProperty("p95_ms").GetDouble() >= l.GetProperty("p50_ms").GetDouble());
            Assert.True(l.GetProperty("rss_after_bytes").GetInt64() > 0);
            Assert.Equal(0, l.GetProperty("differing_outputs").GetInt32());
        }
        Assert.Equal(JsonValueKind.Null, levels[0].GetProperty("vs_one_client").ValueKind);   // no one-client level before the first
        Assert.True(levels[1].GetProperty("vs_one_client").GetDouble() > 0);
        Assert.Contains("concurrency 3: 6/6 ok", r.Stderr);
    }

    [Theory]
    [InlineData("load-test", "--url", "http://192.0.2.1:8080", "must be a loopback address")]
    [InlineData("serve", "--host", "example.org", "must be an IP address or localhost")]
    [InlineData("serve", "--port", "70000", "Port must be in [0, 65535]")]
    [InlineData("serve", "--max-prompts", "65", "--max-prompts (65) must not exceed --queue-capacity (64)")]
    [InlineData("serve", "--max-prompts", "0", "MaxPromptsPerRequest must be >= 1, got 0")]
    [InlineData("serve", "--workers", "9", "--workers must be between 1 and --max-batch (8)")]
    public void Bad_server_options_are_usage_errors(string command, string option, string value, string message)
    {
        var r = ChildProcess.Beagle([command, option, value]);
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains(message, r.Stderr);
    }

    [Theory]
    [InlineData(null, 64, 16)]
    [InlineData(null, 4, 4)]      // the default stays within a smaller queue
    [InlineData(32, 64, 32)]
    public void Max_prompts_defaults_to_16_within_the_queue(int? maxPrompts, int queue, int expected) =>
        Assert.Equal(expected, new Beagle.Cli.Commands.ServeSettings { MaxPrompts = maxPrompts, QueueCapacity = queue }.ServerOptions().MaxPromptsPerRequest);
}
