using Beagle.Decoding;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Decoding;

/// <summary>
/// The tree-budget calibration decides by measurement. Its two decisions are checked with drafts whose quality is
/// known independently: a draft that knows the target's greedy continuations (every draft token accepted) must be
/// chosen, a random one must not (each round would cost at least a plain step and gain nothing). The perfect draft's
/// margin is wide (several x); the random draft is rejected by its acceptance length, not by timing (with a confidence
/// floor it drafts almost nothing, so its timing is plain's ± noise). The class runs alone: its measurements should not
/// share the two cores with other tests.
/// </summary>
[Collection(TimingCollection.Name)]
public class CalibrationTests
{
    static OracleDraft Oracle()
    {
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        var gen = new Generator(target, tok);
        var seqs = TreeBudgetCalibrator.Prompts.Select(p =>
        {
            var ids = tok.Encode(p, true);
            return ids.Concat(gen.Generate(ids, new GenerationOptions { MaxNewTokens = 64 }).SelectMany(c => c.TokenIds)).ToArray();
        });
        return new OracleDraft(target.Config.VocabSize, seqs);
    }

    [Fact]
    public void A_perfect_draft_is_used_and_a_random_one_is_not()
    {
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        var good = TreeBudgetCalibrator.Measure(target, tok, Oracle(), maxNewTokens: 24, repeats: 1);
        Assert.False(good.UsePlain, $"perfect draft rejected: {TreeBudgetCalibrator.Describe(good)}");
        Assert.True(good.Speedup > 1.3, $"a perfect draft should be clearly faster: {TreeBudgetCalibrator.Describe(good)}");

        using var bad = MarkovDraft.Random(target.Config.VocabSize, seed: 3);
        var r = TreeBudgetCalibrator.Measure(target, tok, bad, maxNewTokens: 24, repeats: 1);
        Assert.True(r.UsePlain, $"useless draft accepted: {TreeBudgetCalibrator.Describe(r)}");
    }

    [Fact]
    public void Results_are_cached_per_draft_and_a_corrupt_cache_is_remeasured()
    {
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        using var tmp = TestAssets.TempDir();
        var file = Path.Combine(tmp.Path, "budgets.json");
        using var bad = MarkovDraft.Random(target.Config.VocabSize, seed: 4);
        var first = TreeBudgetCalibrator.GetOrMeasure(target, tok, bad, "random-4", file, maxNewTokens: 8, repeats: 1);
        var again = TreeBudgetCalibrator.GetOrMeasure(target, tok, bad, "random-4", file, maxNewTokens: 8, repeats: 1);
        Assert.Equal(first.MeasuredUtc, again.MeasuredUtc);                     // from the cache, not measured again
        Assert.Equal(first.Key, again.Key);
        var other = TreeBudgetCalibrator.GetOrMeasure(target, tok, bad, "another-draft", file, maxNewTokens: 8, repeats: 1);
        Assert.NotEqual(first.Key, other.Key);                                  // another draft identity: its own entry

        File.WriteAllText(file, "{ not json");
        var remeasured = TreeBudgetCalibrator.GetOrMeasure(target, tok, bad, "random-4", file, maxNewTokens: 8, repeats: 1);
        Assert.True(remeasured.MeasuredUtc > first.MeasuredUtc);
    }

    [Fact]
    public void Greedy_and_sampled_requests_follow_their_own_calibration()
    {
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        var gen = new Generator(target, tok, Oracle());
        gen.Use(new CalibratedBudget(5, 4, 1, UsePlain: false, 2, 1, "", "", DateTime.UtcNow));
        gen.UseForSampling(new CalibratedBudget(8, 4, 2, UsePlain: true, 1, 1, "", "", DateTime.UtcNow));
        var prompt = tok.Encode(TreeBudgetCalibrator.Prompts[0], true);
        GenerationStats Run(SamplingOptions sampling)
        {
            var stats = new GenerationStats();
            foreach (var _ in gen.Generate(prompt, new GenerationOptions { MaxNewTokens = 16, Sampling = sampling, Speculative = new SpeculativeOptions() }, stats)) { }
            return stats;
        }
        var greedy = Run(SamplingOptions.Greedy);
        Assert.True(greedy.DraftRounds > 0);                                  // greedy: speculative at its budget
        Assert.Equal(4, greedy.AcceptedAtDepth.Length);                       // depth 4 = the greedy budget
        var sampled = Run(new SamplingOptions { Temperature = 0.8f, Seed = 1 });
        Assert.Equal(0, sampled.DraftRounds);                                 // sampling: calibration said plain
        var explicitBudget = new GenerationStats();
        foreach (var _ in gen.Generate(prompt, new GenerationOptions { MaxNewTokens = 16, Sampling = new SamplingOptions { Temperature = 0.8f, Seed = 1 },
            Speculative = new SpeculativeOptions { TreeTokens = 3, TreeDepth = 2, TreeTopK = 1 } }, explicitBudget)) { }
        Assert.True(explicitBudget.DraftRounds > 0);                          // an explicit budget is honoured even so
        Assert.Equal(2, explicitBudget.AcceptedAtDepth.Length);
        gen.UseForSampling(new CalibratedBudget(8, 3, 2, UsePlain: false, 2, 1, "", "", DateTime.UtcNow));
        var sampled2 = Run(new SamplingOptions { Temperature = 0.8f, Seed = 1 });
        Assert.True(sampled2.DraftRounds > 0);
        Assert.Equal(3, sampled2.AcceptedAtDepth.Length);                     // its own budget, not the greedy one
    }
}

/// <summary>Tests that measure time run alone, not beside other test classes.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TimingCollection { public const string Name = "Timing"; }
