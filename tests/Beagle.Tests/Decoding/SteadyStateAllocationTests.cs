using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Tests.Infrastructure;
using Xunit;
using Xunit.Abstractions;

namespace Beagle.Tests.Decoding;

/// <summary>
/// Managed allocations of the decode loop's steady state on the CPU backend, separated from the product: each round
/// makes one chunk (its token array and text string), which is the caller's and may allocate; everything else a round
/// does (the forward's outputs, the draft tree and its search, verification, the batch bookkeeping, the text) reuses
/// buffers and must allocate nothing. Rounds are driven through <see cref="Generator.Round"/> on the test's thread and
/// counted with GC.GetAllocatedBytesForCurrentThread, exact to the byte; a chunk's own size is measured by copying it
/// (the same objects: an int array of its length, a string of its text) outside the rounds' count.
/// </summary>
public class SteadyStateAllocationTests(ITestOutputHelper output)
{
    const string Prompt = "Once upon a time";

    /// <summary>Allocation of the rounds after the first 64 tokens: the engine's (rounds minus chunks), the chunks', tokens, rounds.</summary>
    readonly record struct Measured(long Engine, long Chunks, int Tokens, int Rounds)
    {
        public double EnginePerRound => (double)Engine / Rounds;
        public double ChunksPerToken => (double)Chunks / Tokens;
        public override string ToString() => $"{Rounds} rounds, {Tokens} tokens: engine {Engine} B ({EnginePerRound:F1} B/round), chunks {ChunksPerToken:F0} B/token";
    }

    /// <summary>
    /// Runs <paramref name="options"/> (one per sequence, all batched into each round) to the end; measures the rounds
    /// once every sequence has 64 tokens. A whole generation of each first, so that JIT, first-use allocations and the
    /// per-thread scratch are out of the way (a sequence's own buffers grow during its first rounds).
    /// </summary>
    static Measured Measure(Generator g, params GenerationOptions[] options)
    {
        foreach (var o in options) g.Complete(Prompt, o);
        var sequences = options.Select(o => g.Start(Prompt, o, new GenerationStats())).ToList();
        try
        {
            var tokens = new int[sequences.Count];
            long engine = 0, chunks = 0; int measuredTokens = 0, rounds = 0;
            bool measuring = false;
            while (true)
            {
                for (int i = 0; i < sequences.Count; i++)
                    if (sequences[i].TakeChunk() is { } c)
                    {
                        tokens[i] += c.TokenIds.Length;
                        if (!measuring) continue;
                        measuredTokens += c.TokenIds.Length;
                        long b0 = GC.GetAllocatedBytesForCurrentThread();
                        var copy = (c.TokenIds.AsSpan().ToArray(), new string(c.Text.AsSpan()));
                        chunks += GC.GetAllocatedBytesForCurrentThread() - b0;
                        GC.KeepAlive(copy);
                    }
                var running = sequences.Where(s => !s.Done).ToArray();
                if (running.Length < sequences.Count) break;   // measure while every sequence runs: the same batch each round
                measuring = tokens.All(t => t >= 64);
                long a0 = GC.GetAllocatedBytesForCurrentThread();
                g.Round(running);
                if (measuring) { engine += GC.GetAllocatedBytesForCurrentThread() - a0; rounds++; }
            }
            // The last round's chunks were counted in the rounds; take them out too.
            for (int i = 0; i < sequences.Count; i++)
                if (sequences[i].TakeChunk() is { } c && measuring)
                {
                    long b0 = GC.GetAllocatedBytesForCurrentThread();
                    var copy = (c.TokenIds.AsSpan().ToArray(), new string(c.Text.AsSpan()));
                    chunks += GC.GetAllocatedBytesForCurrentThread() - b0;
                    GC.KeepAlive(copy);
                    measuredTokens += c.TokenIds.Length;
                }
            return new Measured(engine - chunks, chunks, measuredTokens, rounds);
        }
        finally { foreach (var s in sequences) s.Dispose(); }
    }

    static GenerationOptions Plain => new() { MaxNewTokens = 400 };
    static GenerationOptions Chain => new() { MaxNewTokens = 400, Speculative = new SpeculativeOptions { TreeTokens = 4, TreeDepth = 3, TreeTopK = 1 } };
    static GenerationOptions Tree => new() { MaxNewTokens = 400, Speculative = new SpeculativeOptions { TreeTokens = 16, TreeDepth = 5, TreeTopK = 4 } };

    /// <summary>Bytes the engine may allocate over all measured rounds of one case: none per round (a rare growth of a reused list would fit).</summary>
    const long Slack = 256;

    [Theory]
    [InlineData("beagle")]
    [InlineData("eagle2")]
    public void A_round_allocates_nothing_but_its_chunk_plain_chain_tree_and_batched(string arch)
    {
        using var draft = DraftCheckpoint.Load(Path.Combine(AppContext.BaseDirectory, "models", "stories260K", arch), TestAssets.Stories);
        var g = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, draft);
        var cases = new (string Name, Measured M)[]
        {
            ("plain", Measure(g, Plain)),
            ("chain 4/3/1", Measure(g, Chain)),
            ("tree 16/5/4", Measure(g, Tree)),
            ("batch of plain + chain + tree", Measure(g, Plain, Chain, Tree)),
        };
        foreach (var (name, m) in cases) output.WriteLine($"{arch} {name}: {m}");
        foreach (var (name, m) in cases)
        {
            Assert.True(m.Rounds >= 20, $"{name}: only {m.Rounds} rounds measured");
            Assert.True(m.Chunks > 0, $"{name}: no chunk measured");   // the measurement sees the product
            Assert.True(m.Engine <= Slack, $"{name}: the engine allocated {m.Engine} B over {m.Rounds} rounds beyond their chunks ({m.EnginePerRound:F1} B/round)");
        }
    }
}
