using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Decoding;

/// <summary>`beagle bench`'s engine: what it reports is what ran (checked against plain generation), warm-up and cancellation.</summary>
public class SpeculativeBenchmarkTests
{
    static readonly string[] Prompts = ["Once upon a time", "Tom and his dog went to the park"];

    [Fact]
    public void Reports_every_method_and_run_and_compares_greedy_outputs_with_plain_decoding()
    {
        var target = TestAssets.Stories;
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, DraftConfig.Beagle), target);   // random: accepts little, still lossless
        var chain = new SpeculativeOptions { TreeTokens = 4, TreeDepth = 3, TreeTopK = 1 };
        var methods = new BenchMethod[] { new("plain", null, null, null), new("beagle", "random", draft, chain) };
        var progress = new List<string>();
        var r = SpeculativeBenchmark.Run(target, TestAssets.StoriesTokenizer, methods, Prompts, maxNewTokens: 12, runs: 3,
            progress: progress.Add, warmUp: TimeSpan.Zero);

        Assert.Equal(["plain", "beagle"], r.Methods.Select(m => m.Name));
        Assert.Equal(3, r.Runs); Assert.Equal(2, r.Prompts); Assert.Equal(12, r.MaxNewTokens);
        Assert.All(r.Methods, m => Assert.Equal(3, m.RunsTokensPerSecond.Length));
        Assert.All(r.Methods, m => Assert.All(m.RunsTokensPerSecond, t => Assert.True(t > 0)));
        Assert.Equal(1.0, r.Methods[0].Speedup);
        Assert.Equal(Math.Round(r.Methods[1].TokensPerSecond / r.Methods[0].TokensPerSecond, 3), r.Methods[1].Speedup, 2);
        Assert.Equal("4/3/1", r.Methods[1].Tree);
        Assert.True(r.Methods[1].AcceptanceLength >= 1);
        Assert.Equal(3, r.Methods[1].AcceptanceByDepth.Length);   // reported only when draft rounds ran: speculation did
        Assert.Empty(r.Methods[0].AcceptanceByDepth);
        Assert.True(r.GreedyOutputsIdentical);
        Assert.Contains(progress, p => p.StartsWith("warming up"));
        Assert.Contains("run 3/3, prompt 2/2", progress);
        Assert.True(r.PeakMemoryPerMethod);   // Linux: the peak is reset before each generation
        Assert.Equal(0, r.Methods[0].DraftBytes);   // plain decoding adds nothing
        // The draft's weights and copies plus one session's buffers (a generation's cache spans the whole context).
        using (var session = draft.StartSession(target.Config.MaxSeqLen))
            Assert.Equal(draft.WeightBytes + session.StateBytes, r.Methods[1].DraftBytes);
        Assert.Equal(r.ToJson(), BenchResult.Parse(r.ToJson()).ToJson());
    }

    /// <summary>A clock that moves 0.1 s each time it is read, so that "how long" becomes "how many reads".</summary>
    sealed class SteppingClock : TimeProvider
    {
        long _ticks;
        public override long TimestampFrequency => 10;   // one tick = 0.1 s
        public override long GetTimestamp() => _ticks++;
    }

    [Fact]
    public void Warms_up_until_the_clock_says_the_time_is_up_and_honours_cancellation()
    {
        var target = TestAssets.Stories;
        var methods = new BenchMethod[] { new("plain", null, null, null) };
        var progress = new List<string>();
        // The clock is read once at the start and once before each further pass: 0.1, 0.2, 0.3 s left room, 0.4 s did not.
        SpeculativeBenchmark.Run(target, TestAssets.StoriesTokenizer, methods, Prompts, maxNewTokens: 4, runs: 1, progress: progress.Add,
            warmUp: TimeSpan.FromSeconds(0.4), clock: new SteppingClock());
        Assert.Equal(["warming up (0.4 s): pass 1", "warming up (0.4 s): pass 2", "warming up (0.4 s): pass 3", "warming up (0.4 s): pass 4"],
            progress.Where(p => p.StartsWith("warming up")));
        progress.Clear();
        SpeculativeBenchmark.Run(target, TestAssets.StoriesTokenizer, methods, Prompts, maxNewTokens: 4, runs: 1, progress: progress.Add, warmUp: TimeSpan.Zero);
        Assert.Single(progress, p => p.StartsWith("warming up"));   // no warm-up asked: still one untimed pass

        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() =>
            SpeculativeBenchmark.Run(target, TestAssets.StoriesTokenizer, methods, Prompts, 4, 1, cancellationToken: cts.Token, warmUp: TimeSpan.FromSeconds(30)));
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            SpeculativeBenchmark.Run(target, TestAssets.StoriesTokenizer, methods, Prompts, 4, 1, warmUp: TimeSpan.FromSeconds(-1)));
    }

    [Fact]
    public void A_prompt_longer_than_the_context_is_cut_from_the_left_said_once_and_counted()
    {
        var target = TestAssets.Stories;   // context 512
        var tok = TestAssets.StoriesTokenizer;
        var longPrompt = "Lily and Tom found a big box. " + string.Join(' ', Enumerable.Repeat("They played with the red ball in the park.", 80));
        Assert.True(tok.Encode(longPrompt, true).Length > target.Config.MaxSeqLen);
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, DraftConfig.Beagle), target);
        var methods = new BenchMethod[] { new("plain", null, null, null), new("beagle", "random", draft, new SpeculativeOptions { TreeTokens = 4, TreeDepth = 3, TreeTopK = 1 }) };
        var warnings = new List<string>();

        var r = SpeculativeBenchmark.Run(target, tok, methods, [Prompts[0], longPrompt], maxNewTokens: 16, runs: 1, warmUp: TimeSpan.Zero, warn: warnings.Add);

        Assert.Equal(1, r.TruncatedPrompts);
        var w = Assert.Single(warnings);
        Assert.StartsWith("prompt 2 (\"Lily and Tom found a big ...\")", w);
        Assert.Contains("cut from the left to 496 tokens", w);   // 512 - 16 new tokens
        Assert.True(r.GreedyOutputsIdentical);
        Assert.All(r.Methods, m => Assert.True(m.TokensPerSecond > 0));
        Assert.Equal(1, BenchResult.Parse(r.ToJson()).TruncatedPrompts);
        Assert.Contains("\"truncated_prompts\": 1", r.ToJson());
    }

    [Fact]
    public void The_method_order_rotates_so_that_each_method_goes_first_equally_often()
    {
        var orders = Enumerable.Range(0, 6).Select(turn => SpeculativeBenchmark.MethodOrder(3, turn)).ToArray();
        Assert.All(orders, o => Assert.Equal([0, 1, 2], o.Order()));                  // every method once per prompt
        Assert.Equal([2, 2, 2], orders.GroupBy(o => o[0]).OrderBy(g => g.Key).Select(g => g.Count()));   // each first twice in 6 turns
        Assert.Equal([1, 2, 0], orders[1]);                                           // plain (0) is not always first
        Assert.Equal([0], SpeculativeBenchmark.MethodOrder(1, 5));
    }

    [Fact]
    public void A_peak_memory_that_cannot_be_reset_is_said_once_and_marked_in_the_result()
    {
        var target = TestAssets.Stories;
        var methods = new BenchMethod[] { new("plain", null, null, null) };
        var warnings = new List<string>();
        int resets = 0;
        var r = SpeculativeBenchmark.Run(target, TestAssets.StoriesTokenizer, methods, Prompts, 4, 2, null, null, default, TimeSpan.Zero, warnings.Add, null,
            () => { resets++; return "Permission denied"; });
        var w = Assert.Single(warnings);
        Assert.Contains("cannot be reset here (Permission denied)", w);
        Assert.Equal(1, resets);                     // not tried again once it failed
        Assert.False(r.PeakMemoryPerMethod);
        Assert.Contains("\"peak_memory_per_method\": false", r.ToJson());
        Assert.False(BenchResult.Parse(r.ToJson()).PeakMemoryPerMethod);
    }

    [Fact]
    public void Fitting_to_the_context_keeps_bos_and_the_last_tokens()
    {
        int[] ids = [1, 10, 11, 12, 13, 14, 15];
        Assert.Same(ids, SpeculativeBenchmark.FitToContext(ids, contextLength: 10, maxNewTokens: 3, bosId: 1));   // 7 + 3 fit
        Assert.Equal([1, 14, 15], SpeculativeBenchmark.FitToContext(ids, contextLength: 10, maxNewTokens: 7, bosId: 1));
        Assert.Equal([13, 14, 15], SpeculativeBenchmark.FitToContext(ids, contextLength: 10, maxNewTokens: 7));             // no BOS id
        Assert.Equal([1, 15], SpeculativeBenchmark.FitToContext(ids, contextLength: 10, maxNewTokens: 100, bosId: 1));      // at least one token besides BOS
    }

    [Fact]
    public void Prompt_files_skip_empty_prompts_and_name_the_line_of_bad_json()
    {
        using var dir = TestAssets.TempDir();
        File.WriteAllLines(dir.File("q.jsonl"), ["{\"turns\": [\"Tell me a story.\"]}", "{\"turns\": [\"\"]}", "{\"prompt\": \"Once upon a time\"}"]);
        Assert.Equal(["Tell me a story.", "Once upon a time"], SpeculativeBenchmark.LoadPrompts(dir.File("q.jsonl")));

        File.WriteAllLines(dir.File("bad.jsonl"), ["{\"turns\": [\"ok\"]}", "{\"turns\": [\"unterminated"]);
        var e = Assert.Throws<InvalidDataException>(() => SpeculativeBenchmark.LoadPrompts(dir.File("bad.jsonl")));
        Assert.StartsWith($"{dir.File("bad.jsonl")}:2: not a JSON object", e.Message);
    }
}
