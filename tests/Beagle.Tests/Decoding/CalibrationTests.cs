using Beagle.Decoding;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Decoding;

/// <summary>
/// The tree-budget calibration decides by measurement. What it measures is checked with drafts whose quality is known
/// independently: a draft that knows the target's greedy continuations has every draft token accepted, a random one
/// almost none, and a random one is therefore rejected (by its acceptance length, whatever the timing said). The
/// timing side of the decision is a rule on measured ratios, tested on given numbers: how fast a setting is on this
/// machine belongs to benchmarks, not to unit tests. The class runs alone: its measurements should not share the two
/// cores with other tests.
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
    public void Calibration_measures_a_perfect_drafts_full_acceptance_and_rejects_a_random_draft_by_its_acceptance()
    {
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        var good = TreeBudgetCalibrator.Measure(target, tok, Oracle(), maxNewTokens: 24, repeats: 1);
        // Every draft token accepted: each round gives its whole depth plus the target's token, except rounds cut by
        // the 24-token limit (a generation of 24 tokens has at most 23 from rounds), so tau is near Depth + 1.
        Assert.True(good.AcceptanceLength >= 0.8 * (good.Depth + 1), $"a perfect draft at depth {good.Depth} gave tau {good.AcceptanceLength}: {TreeBudgetCalibrator.Describe(good)}");

        using var bad = MarkovDraft.Random(target.Config.VocabSize, seed: 3);
        var r = TreeBudgetCalibrator.Measure(target, tok, bad, maxNewTokens: 24, repeats: 1);
        Assert.True(r.AcceptanceLength < 1.05, $"a random draft should almost never be accepted: tau {r.AcceptanceLength}");
        Assert.True(r.UsePlain, $"useless draft accepted: {TreeBudgetCalibrator.Describe(r)}");
    }

    [Theory]
    [InlineData(1.30, 3.0, false)]   // clearly faster and accepted: speculate
    [InlineData(1.04, 3.0, true)]    // within noise of plain: decode plainly
    [InlineData(1.05, 3.0, false)]   // the threshold itself counts as paying
    [InlineData(1.60, 1.04, true)]   // "faster" with almost nothing accepted is noise: decode plainly
    [InlineData(double.NaN, 3.0, true)]
    public void The_decision_speculates_only_beyond_noise_and_with_real_acceptance(double ratio, double tau, bool plain)
        => Assert.Equal(plain, TreeBudgetCalibrator.DecodesPlainly(ratio, tau));

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
