using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Tests.Infrastructure;
using Xunit;
using Xunit.Abstractions;

namespace Beagle.Tests.Decoding;

/// <summary>
/// Managed allocations of the decode loop's steady state (GC.GetAllocatedBytesForCurrentThread over the tokens after
/// the first 64, the generation running on the test's thread): speculative rounds reuse their buffers (the draft
/// session's log-probs and attention scratch, the strategy's accepted rows), so a speculative token allocates less than
/// a plain one. What remains is mostly the target forward's TorchSharp tensor objects (docs/benchmarks.md).
/// </summary>
public class SteadyStateAllocationTests(ITestOutputHelper output)
{
    static (double PerToken, double PerRound) Measure(Generator g, GenerationOptions o)
    {
        g.Complete("Once upon a time", o);   // JIT and first-use allocations out of the way
        var stats = new GenerationStats();
        int tokens = 0, startTokens = 0; long start = 0, startRounds = 0;
        foreach (var c in g.Generate("Once upon a time", o, stats))
        {
            tokens += c.TokenIds.Count();
            if (start == 0 && tokens >= 64) { start = GC.GetAllocatedBytesForCurrentThread(); startTokens = tokens; startRounds = stats.TargetForwards; }
        }
        long bytes = GC.GetAllocatedBytesForCurrentThread() - start;
        return ((double)bytes / (tokens - startTokens), (double)bytes / (stats.TargetForwards - startRounds));
    }

    [Theory]
    [InlineData("beagle")]
    [InlineData("eagle2")]
    public void A_speculative_round_reuses_its_buffers_and_a_token_allocates_less_than_plain_decoding(string arch)
    {
        using var draft = DraftCheckpoint.Load(Path.Combine(AppContext.BaseDirectory, "models", "stories260K", arch), TestAssets.Stories);
        var g = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, draft);
        var plain = Measure(g, new GenerationOptions { MaxNewTokens = 400 });
        var spec = Measure(g, new GenerationOptions { MaxNewTokens = 400, Speculative = new SpeculativeOptions { TreeTokens = 4, TreeDepth = 3, TreeTopK = 1 } });
        var tree = Measure(g, new GenerationOptions { MaxNewTokens = 400, Speculative = new SpeculativeOptions { TreeTokens = 16, TreeDepth = 5, TreeTopK = 4 } });
        output.WriteLine($"{arch}: plain {plain.PerToken:F0} B/token; chain 4/3/1 {spec.PerToken:F0} B/token ({spec.PerRound:F0} B/round); tree 16/5/4 {tree.PerToken:F0} B/token ({tree.PerRound:F0} B/round)");

        // Before the buffers were reused: a 4/3/1 round allocated 29 KB (11 KB per token, 6x plain decoding), a 16/5/4
        // round 94 KB. Now 2.8 KB and 27 KB (the tree search's candidate lists and sorts, and the tree mask, remain).
        Assert.True(spec.PerToken < plain.PerToken, $"chain: {spec.PerToken:F0} B/token, plain {plain.PerToken:F0}");
        Assert.True(spec.PerRound < 4096, $"chain: {spec.PerRound:F0} B/round");
        Assert.True(tree.PerRound < 32768, $"tree: {tree.PerRound:F0} B/round");
    }
}
