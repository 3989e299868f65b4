using System.Text.Json;
using Beagle.Decoding;
using Beagle.Runtime;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Decoding;

/// <summary>
/// One budget type, one validation, and how a partial budget combines with the calibrated one: every named field is
/// used as given, the rest comes from the basis, and what cannot hold is refused (never shrunk in silence).
/// </summary>
public class TreeBudgetOptionsTests
{
    static readonly TreeBudget Calibrated = new(13, 12, 1, 0.1);
    static readonly TreeBudgetSettingNames Cli = new("--tree-tokens", "--tree-depth", "--tree-topk", "--tree-min-prob");

    [Fact]
    public void A_partial_budget_overrides_only_what_it_names()
    {
        Assert.Equal(new TreeBudget(8, 12, 1, 0.1), new TreeBudgetOptions { Tokens = 8 }.Over(Calibrated));
        Assert.Equal(new TreeBudget(13, 12, 4, 0.1), new TreeBudgetOptions { TopK = 4 }.Over(Calibrated));
        Assert.Equal(new TreeBudget(13, 12, 1, 0), new TreeBudgetOptions { MinProb = 0 }.Over(Calibrated));
        Assert.Equal(Calibrated, TreeBudgetOptions.None.Over(Calibrated));
        Assert.Equal(new TreeBudget(16, 5, 4, 0.02), TreeBudgetOptions.Exactly(new TreeBudget(16, 5, 4, 0.02)).Over(Calibrated));
    }

    [Fact]
    public void A_named_shape_lowers_only_the_unnamed_token_count_to_what_it_holds()
    {
        // depth 2 x top-k 1 holds 3 tokens: the calibrated 13 (nobody's choice) becomes 3; the named depth is kept.
        Assert.Equal(new TreeBudget(3, 2, 1, 0.1), new TreeBudgetOptions { Depth = 2 }.Over(Calibrated));
    }

    [Fact]
    public void Named_tokens_that_the_basis_shape_cannot_hold_are_refused_not_clamped()
    {
        // Before: --tree-tokens 16 alone fell back to 4/3/1 and was clamped to a 4-token chain without a word.
        var e = Assert.Throws<ArgumentException>(() => new TreeBudgetOptions { Tokens = 16 }.Over(TreeBudget.Default, Cli));
        Assert.Equal("--tree-tokens", e.ParamName);
        Assert.Contains("--tree-depth", e.Message);
        Assert.Contains("--tree-topk", e.Message);
        Assert.Contains("at most 4 tokens", e.Message);
        // With the shape named too it holds.
        Assert.Equal(new TreeBudget(16, 5, 4, 0), new TreeBudgetOptions { Tokens = 16, Depth = 5, TopK = 4 }.Over(TreeBudget.Default));
    }

    [Theory]
    [InlineData(16, 3, 1)]
    [InlineData(10, 4, 2)]
    public void A_fully_named_shape_that_cannot_hold_its_tokens_is_refused_by_validation(int tokens, int depth, int topK)
    {
        var e = Assert.Throws<ArgumentException>(() => new TreeBudgetOptions { Tokens = tokens, Depth = depth, TopK = topK }.Validate(Cli));
        Assert.Equal("--tree-tokens", e.ParamName);
        Assert.Contains($"at most {depth * topK + 1} tokens", e.Message);
    }

    [Theory]
    [InlineData(1, null, null, null, "TreeTokens")]
    [InlineData(257, null, null, null, "TreeTokens")]
    [InlineData(null, 33, null, null, "TreeDepth")]
    [InlineData(null, null, 65, null, "TreeTopK")]
    [InlineData(null, null, null, 1.0, "TreeMinProb")]
    public void Ranges_are_checked_in_one_place_and_the_setting_named(int? tokens, int? depth, int? topK, double? minProb, string name)
    {
        var o = new TreeBudgetOptions { Tokens = tokens, Depth = depth, TopK = topK, MinProb = minProb };
        Assert.Equal(name, Assert.Throws<ArgumentOutOfRangeException>(() => o.Validate()).ParamName);
        // Each face's names come through the same check.
        var cli = Assert.Throws<ArgumentOutOfRangeException>(() => o.Validate(Cli));
        Assert.StartsWith("--tree-", cli.ParamName);
    }

    [Fact]
    public void The_speculative_options_shorthands_are_the_budget_fields()
    {
        var s = new SpeculativeOptions { TreeTokens = 6, TreeMinProb = 0.2 };
        Assert.Equal(new TreeBudgetOptions { Tokens = 6, MinProb = 0.2 }, s.Tree);
        Assert.Equal(new SpeculativeOptions { Tree = new TreeBudgetOptions { Tokens = 6, MinProb = 0.2 } }, s);
    }

    [Fact]
    public void The_generator_decodes_a_partial_request_budget_over_its_calibrated_one_losslessly()
    {
        using var draft = MarkovDraft.Bigram(TestAssets.StoriesTokenizer, TestAssets.TinyStories, 512);
        var plain = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer);
        var gen = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, draft);
        gen.Use(new CalibratedBudget(6, 5, 1, UsePlain: false, 2, 1, "", "", DateTime.UtcNow));
        var o = new GenerationOptions { MaxNewTokens = 40 };
        var expected = plain.Complete("Once upon a time", o);
        var actual = gen.Complete("Once upon a time", o with { Speculative = new SpeculativeOptions { TreeTopK = 2 } });
        Assert.Equal(expected.TokenIds, actual.TokenIds);
        Assert.Equal(5, actual.Stats.AcceptedAtDepth.Length);   // the calibrated depth, under the request's top-k
        // A request whose tokens the calibrated chain cannot hold fails before decoding, naming the setting.
        var e = Assert.Throws<ArgumentException>(() => gen.Generate("Once upon a time", o with { Speculative = new SpeculativeOptions { TreeTokens = 16 } }).ToList());
        Assert.Equal("TreeTokens", e.ParamName);
    }

    /// <summary>A cache file holding one calibration result for (target, draft, greedy) on this machine.</summary>
    static string SeedCache(TempDir dir, Beagle.Drafting.IDraftModel draft, CalibratedBudget result)
    {
        var file = dir.File("tree-budgets.json");
        var key = TreeBudgetCalibrator.KeyFor(TestAssets.Stories, TreeBudgetCalibrator.DraftIdentity(draft));
        File.WriteAllText(file, JsonSerializer.Serialize(new Dictionary<string, CalibratedBudget> { [key] = result with { Key = key } }));
        return file;
    }

    [Fact]
    public void The_composition_root_fills_what_the_budget_leaves_open_from_calibration_and_honours_what_it_names()
    {
        using var dir = TestAssets.TempDir();
        using var draft = MarkovDraft.Random(512, seed: 5);
        var file = SeedCache(dir, draft, new CalibratedBudget(13, 12, 1, UsePlain: true, 1, 1, "", "", DateTime.UtcNow, MinProb: 0.1));

        var gen = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, draft);
        ModelLoader.ApplyTreeBudget(gen, TreeBudgetOptions.None, calibrate: true, file);
        Assert.Equal(new TreeBudget(13, 12, 1, 0.1), gen.DefaultTreeBudget);
        Assert.False(gen.SpeculationPays);                   // calibration said plain, and nothing was asked for

        ModelLoader.ApplyTreeBudget(gen, new TreeBudgetOptions { TopK = 2 }, calibrate: true, file);
        Assert.Equal(new TreeBudget(13, 12, 2, 0.1), gen.DefaultTreeBudget);
        Assert.True(gen.SpeculationPays);                    // a budget the user named is honoured

        var e = Assert.Throws<ArgumentException>(() => ModelLoader.ApplyTreeBudget(gen, new TreeBudgetOptions { Tokens = 16 }, calibrate: true, file));
        Assert.Contains("calibrated budget", e.Message);

        // A complete budget needs no calibration: the cache is not read or written.
        var untouched = dir.File("other/tree-budgets.json");
        ModelLoader.ApplyTreeBudget(gen, TreeBudgetOptions.Exactly(new TreeBudget(5, 4, 1)), calibrate: true, untouched);
        Assert.Equal(new TreeBudget(5, 4, 1), gen.DefaultTreeBudget);
        Assert.False(File.Exists(untouched));
    }
}
