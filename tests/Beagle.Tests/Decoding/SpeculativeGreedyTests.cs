using Beagle.Decoding;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Decoding;

/// <summary>Greedy speculative decoding must equal plain greedy decoding token for token, whatever the draft.</summary>
public class SpeculativeGreedyTests
{
    static readonly Lazy<MarkovDraft> Bigram = new(() => MarkovDraft.Bigram(TestAssets.StoriesTokenizer, TestAssets.TinyStories, 512));
    static readonly Lazy<MarkovDraft> RandomDraft = new(() => MarkovDraft.Random(512, 7));

    /// <summary>The drafts that need no training, as the tests know them (shared with the sampling tests).</summary>
    internal static Beagle.Drafting.IDraftModel TrainingFree(string kind) => kind switch
    {
        "ngram" => NGram.Value,
        "draft-lm" => DraftLm.Value,
        "draft-lm-random" => DraftLmRandom.Value,
        "draft-lm-self" => DraftLmSelf.Value,
        _ => throw new ArgumentException(kind),
    };
    static readonly Lazy<Beagle.Drafting.NGram.NGramDraft> NGram = new(() => new(TestAssets.Stories));
    /// <summary>A real draft model of the same vocabulary: stories5M drafting for stories260K (they agree on most tokens, not all).</summary>
    static readonly Lazy<Beagle.Drafting.DraftLm.DraftLmModel> DraftLm = new(() =>
        new(TestAssets.Stories5M, TestAssets.Stories, ownsModel: false, (TestAssets.StoriesTokenizer, TestAssets.StoriesTokenizer)));
    /// <summary>The target as its own draft model (cheap; greedy accepts everything, sampling does not).</summary>
    static readonly Lazy<Beagle.Drafting.DraftLm.DraftLmModel> DraftLmSelf = new(() => new(TestAssets.Stories, TestAssets.Stories, ownsModel: false));
    /// <summary>A random-weight draft model: nearly every proposal is rejected, so its cache is rolled back every round.</summary>
    static readonly Lazy<Beagle.Drafting.DraftLm.DraftLmModel> DraftLmRandom = new(() =>
    {
        using var w = Beagle.Models.LlamaWeights.Random(TestAssets.Stories.Config with { Layers = 2 }, seed: 3);
        return new(new Beagle.Models.LlamaModel(w), TestAssets.Stories);
    });

    static Beagle.Drafting.IDraftModel Draft(string kind) => kind switch
    {
        "bigram" => Bigram.Value,
        "random" => RandomDraft.Value,
        _ => TrainingFree(kind),
    };

    public static TheoryData<string, int, int, int, double> Shapes => new()
    {
        { "bigram", 2, 1, 1, 0 },       // a 1-token chain
        { "bigram", 5, 4, 1, 0 },       // a chain of 4
        { "bigram", 6, 5, 1, 0 },       // the default budget
        { "bigram", 16, 5, 4, 0 },      // a tree
        { "bigram", 48, 6, 8, 0 },      // wider still (over 32 tokens: libtorch attention)
        { "bigram", 11, 10, 1, 0.05 },  // a chain as deep as the draft is sure (confidence floor)
        { "bigram", 16, 8, 4, 0.02 },   // a tree with a floor
        { "random", 2, 1, 1, 0 },
        { "random", 16, 5, 4, 0 },
        { "random", 48, 6, 8, 0 },
        { "random", 11, 10, 1, 0.99 },  // a floor no random guess clears: plain steps inside the strategy
        // Prompt lookup: a point-mass draft, often with no proposal at all (the tree then stops growing there).
        { "ngram", 8, 7, 1, 0 },
        { "ngram", 16, 5, 4, 0 },       // a tree budget: every node has one proposal at most, so a chain
        { "ngram", 11, 10, 1, 0.05 },
        // A draft language model with its own KV cache, kept in step with the accepted tokens.
        { "draft-lm", 5, 4, 1, 0 },
        { "draft-lm", 16, 5, 4, 0 },    // a tree: the draft model runs tree-masked scratch slots
        { "draft-lm", 48, 6, 8, 0 },
        { "draft-lm", 11, 10, 1, 0.05 },
        { "draft-lm-random", 5, 4, 1, 0 },
        { "draft-lm-random", 16, 5, 4, 0 },
    };

    static readonly string[] Prompts = ["Once upon a time", "Tom and Lily went to the", "The little dog was sad because", ""];

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Greedy_speculative_output_equals_plain_greedy(string draftKind, int tokens, int depth, int topK, double minProb)
    {
        var draft = Draft(draftKind);
        var plain = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer);
        var spec = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, draft);
        foreach (var prompt in Prompts)
        {
            var o = new GenerationOptions { MaxNewTokens = 120 };
            var expected = plain.Complete(prompt, o);
            var actual = spec.Complete(prompt, o with { Speculative = new SpeculativeOptions { TreeTokens = tokens, TreeDepth = depth, TreeTopK = topK, TreeMinProb = minProb } });
            Assert.Equal(expected.TokenIds, actual.TokenIds);
            Assert.Equal(expected.Text, actual.Text);
            Assert.True(actual.Stats.TargetForwards <= expected.Stats.TargetForwards);
            Assert.True(actual.Stats.AcceptanceLength >= 1.0);
            // Speculation ran (the equality above would hold trivially if it had not), except where the floor forbids it.
            if (draftKind == "random" && minProb > 0) Assert.Equal(0, actual.Stats.DraftRounds);
            else Assert.True(actual.Stats.DraftRounds > 0, $"{draftKind} {tokens}/{depth}/{topK} p>={minProb}: no draft round ran");
        }
    }

    static readonly Lazy<Beagle.Drafting.IDraftModel> Trained = new(() =>
        Beagle.Drafting.DraftCheckpoint.Load(Beagle.Runtime.DefaultModels.BundledDraft("stories260K", "beagle")!, TestAssets.Stories));

    [Theory]
    [InlineData(4, 3, 1, 0)]        // the default chain
    [InlineData(8, 7, 1, 0)]        // a long chain
    [InlineData(16, 5, 4, 0)]       // a tree
    [InlineData(13, 12, 1, 0.1)]    // calibration's choice for this draft: a chain as deep as the draft is sure
    public void Greedy_decoding_with_the_trained_draft_equals_plain_greedy_and_accepts_well_over_one_token_a_round(int tokens, int depth, int topK, double minProb)
    {
        var plain = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer);
        var spec = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, Trained.Value);
        var budget = new SpeculativeOptions { TreeTokens = tokens, TreeDepth = depth, TreeTopK = topK, TreeMinProb = minProb };
        long rounds = 0, accepted = 0, roundTokens = 0, forwards = 0;
        foreach (var prompt in Prompts)
        {
            var o = new GenerationOptions { MaxNewTokens = 120 };
            var expected = plain.Complete(prompt, o);
            var actual = spec.Complete(prompt, o with { Speculative = budget });
            Assert.Equal(expected.TokenIds, actual.TokenIds);
            rounds += actual.Stats.DraftRounds; accepted += actual.Stats.AcceptedDraftTokens;
            roundTokens += actual.Stats.RoundTokens; forwards += actual.Stats.TargetForwards;
        }
        double tau = (double)roundTokens / forwards;
        Assert.True(rounds > 0 && accepted > rounds, $"{rounds} draft rounds, {accepted} draft tokens accepted");
        Assert.True(tau > 2, $"tau {tau:F2}: the trained draft should give well over one token per target forward");
    }

    [Fact]
    public void The_acceptance_length_counts_only_tokens_that_reached_the_output()
    {
        // A long chain the trained draft fills: rounds verify up to 8 tokens, so most token limits cut a round short.
        var spec = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, Trained.Value);
        var budget = new SpeculativeOptions { TreeTokens = 8, TreeDepth = 7, TreeTopK = 1 };
        for (int max = 2; max <= 12; max++)
        {
            var r = spec.Complete("Once upon a time", new GenerationOptions { MaxNewTokens = max, Speculative = budget });
            Assert.Equal(FinishReason.Length, r.Stats.FinishReason);
            Assert.Equal(max, r.Stats.NewTokens);
            // The first token comes from the prefill; every other emitted token from a round, and nothing else counts.
            Assert.Equal(max - 1, r.Stats.RoundTokens);
        }
    }

    [Fact]
    public void A_generation_that_ends_with_EOS_counts_the_EOS_and_nothing_after_it()
    {
        var plain = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer);
        var spec = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, Trained.Value);
        var o = new GenerationOptions { MaxNewTokens = 400 };
        var p = plain.Complete("Once upon a time", o);
        Assert.Equal(FinishReason.EndOfSequence, p.Stats.FinishReason);   // the story ends within the budget
        Assert.Equal(p.Stats.TargetForwards, p.Stats.RoundTokens);         // plain decoding: exactly one token per forward, EOS included
        Assert.Equal(1.0, p.Stats.AcceptanceLength);
        var s = spec.Complete("Once upon a time", o with { Speculative = new SpeculativeOptions { TreeTokens = 8, TreeDepth = 7, TreeTopK = 1 } });
        Assert.Equal(p.TokenIds, s.TokenIds);
        Assert.Equal(FinishReason.EndOfSequence, s.Stats.FinishReason);
        Assert.Equal(s.Stats.NewTokens, s.Stats.RoundTokens);   // NewTokens - 1 from rounds, plus the EOS that ended the last one
    }

    [Theory]
    [InlineData(16, 32, 17)]
    [InlineData(16, 9, 64)]
    [InlineData(256, 32, 64)]
    public void Budgets_that_would_expand_more_nodes_than_a_round_holds_still_decode_losslessly(int tokens, int depth, int topK)
    {
        // 1 + topK * (depth - 1) > 512: the tree stops growing where a round is full instead of failing mid-stream.
        using var draft = Beagle.Drafting.DraftCheckpoint.Load(Beagle.Runtime.DefaultModels.BundledDraft("stories260K", "beagle")!, TestAssets.Stories);
        var plain = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer);
        var spec = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, draft);
        var o = new GenerationOptions { MaxNewTokens = 24 };
        var expected = plain.Complete("Once upon a time", o);
        var actual = spec.Complete("Once upon a time", o with { Speculative = new SpeculativeOptions { TreeTokens = tokens, TreeDepth = depth, TreeTopK = topK }.Validate() });
        Assert.Equal(expected.TokenIds, actual.TokenIds);
        Assert.True(actual.Stats.DraftRounds > 0 && actual.Stats.AcceptedDraftTokens > 0, "speculation ran");
        Assert.True(actual.Stats.AcceptanceLength > 1.5, $"the trained draft should be accepted (tau {actual.Stats.AcceptanceLength:F2})");
    }

    [Theory]
    [InlineData(-0.1)]
    [InlineData(1.0)]
    [InlineData(double.NaN)]
    public void A_confidence_floor_outside_0_to_1_is_refused(double floor)
    {
        var spec = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, Bigram.Value);
        var o = new GenerationOptions { MaxNewTokens = 8, Speculative = new SpeculativeOptions { TreeMinProb = floor } };
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => spec.Generate("Once upon a time", o).ToList());
        Assert.Equal("TreeMinProb", e.ParamName);
    }

    [Fact]
    public void A_good_draft_accepts_more_than_one_token_per_forward()
    {
        var spec = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, Bigram.Value);
        var r = spec.Complete("Once upon a time", new GenerationOptions { MaxNewTokens = 200, Speculative = new SpeculativeOptions() });
        Assert.True(r.Stats.DraftRounds > 0, "speculation ran");
        Assert.True(r.Stats.AcceptanceLength > 1.3, $"acceptance length {r.Stats.AcceptanceLength}");
        Assert.True(r.Stats.AcceptanceRateByDepth[0] > r.Stats.AcceptanceRateByDepth[^1]);
    }

    [Fact]
    public void Generation_near_the_end_of_the_context_stays_lossless_and_stops_cleanly()
    {
        var model = TestAssets.Stories;
        var prompt = TestAssets.StoriesTokenizer.Encode("Once upon a time", true).ToList();
        while (prompt.Count < model.Config.MaxSeqLen - 20) prompt.AddRange(prompt.Skip(1).Take(model.Config.MaxSeqLen - 20 - prompt.Count));
        var o = new GenerationOptions { MaxNewTokens = 100 };
        var plain = new Generator(model, TestAssets.StoriesTokenizer).Generate(prompt, o).SelectMany(c => c.TokenIds).ToArray();
        var stats = new GenerationStats();
        var spec = new Generator(model, TestAssets.StoriesTokenizer, Bigram.Value)
            .Generate(prompt, o with { Speculative = new SpeculativeOptions { TreeTokens = 16, TreeDepth = 5, TreeTopK = 4 } }, stats).SelectMany(c => c.TokenIds).ToArray();
        Assert.Equal(plain, spec);
        Assert.True(stats.DraftRounds > 0, "speculation ran near the end of the context");
        Assert.True(stats.FinishReason is FinishReason.ContextFull or FinishReason.EndOfSequence, stats.FinishReason.ToString());
    }

    [Theory]
    [InlineData(1, null, null, "TreeTokens")]
    [InlineData(300, null, null, "TreeTokens")]
    [InlineData(null, 0, null, "TreeDepth")]
    [InlineData(null, 33, null, "TreeDepth")]
    [InlineData(null, null, 0, "TreeTopK")]
    [InlineData(null, null, 65, "TreeTopK")]
    public void Tree_settings_out_of_range_are_refused_with_the_setting_named(int? tokens, int? depth, int? topK, string name)
    {
        var spec = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, Bigram.Value);
        var o = new GenerationOptions { MaxNewTokens = 8, Speculative = new SpeculativeOptions { TreeTokens = tokens, TreeDepth = depth, TreeTopK = topK } };
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => spec.Generate("Once upon a time", o).ToList());
        Assert.Equal(name, e.ParamName);
    }
}
