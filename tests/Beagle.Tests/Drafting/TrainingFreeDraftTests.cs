using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Drafting.DraftLm;
using Beagle.Drafting.NGram;
using Beagle.Models;
using Beagle.Tests.Infrastructure;
using Beagle.Tokenization;
using Xunit;

namespace Beagle.Tests.Drafting;

/// <summary>The drafts that need no training, session by session: prompt lookup's proposals and a draft model's cache.</summary>
public class TrainingFreeDraftTests(Xunit.Abstractions.ITestOutputHelper output)
{
    static float[] Row(IDraftSession s, int token, int position, int parent) => ((IArrayDraftSession)s).ExpandToBuffer([token], [position], [parent]).ToArray();

    static void Commit(IDraftSession s, ReadOnlySpan<int> tokens) => ((IArrayDraftSession)s).Commit(tokens, ReadOnlySpan<float>.Empty);

    static int Proposal(float[] row)
    {
        int best = -1;
        for (int v = 0; v < row.Length; v++)
        {
            if (row[v] == 0f) { Assert.Equal(-1, best); best = v; }
            else Assert.True(float.IsNegativeInfinity(row[v]), $"token {v}: log-probability {row[v]}, expected 0 or -inf");
        }
        return best;
    }

    [Fact]
    public void Prompt_lookup_proposes_what_followed_the_latest_longest_match_including_draft_ancestors()
    {
        using var draft = new NGramDraft(16, new NGramOptions { MaxNgram = 3, MinNgram = 1 });
        using var s = draft.StartSession(64);
        //            0  1  2  3  4  5  6  7  8
        Commit(s, (int[])[9, 5, 6, 7, 8, 4, 6, 7, 3]);
        // Root 9 (text ... 3 9): "3 9" and "9" alone match at 0, so 5 follows.
        Assert.Equal(5, Proposal(Row(s, 9, 9, -1)));
        // Child 5 (text ... 3 9 5): "9 5" matches at 0-1, so 6 follows; then "5 6" → 7 (position 3).
        Assert.Equal(6, Proposal(Row(s, 5, 10, 0)));
        // Child 6 → text "... 9 5 6": 3-gram "9 5 6" at 0-2 → 7.
        Assert.Equal(7, Proposal(Row(s, 6, 11, 1)));
        // Child 7 → "5 6 7" at 1-3 → 8 (the 2-gram "6 7" would also match the later 6-7 at 6-7, followed by 3: longer wins).
        Assert.Equal(8, Proposal(Row(s, 7, 12, 2)));
        s.EndRound();
        // A token never seen: no proposal, a row of -inf (no NaN), and the tree does not grow.
        var none = Row(s, 15, 9, -1);
        Assert.Equal(-1, Proposal(none));
        int steps = 0;
        s.EndRound();
        var tree = DraftTree.Build(s, null, 15, 9, 8, 7, 1, ref steps);
        Assert.Equal(1, tree.Count);
        s.EndRound();
        var wide = DraftTree.Build(s, null, 15, 9, 16, 5, 4, ref steps);
        Assert.Equal(1, wide.Count);
        s.EndRound();
        // A tree budget over a point mass keeps one path: root 6 → 7 (the latest "6") → 3 (the latest "6 7", at 6-7)
        // → 6 ("6 7 3" at 6-8 is followed by the root itself: the draft's own path is part of the text) → 7 → 3.
        var chain = DraftTree.Build(s, null, 6, 9, 16, 5, 4, ref steps);
        Assert.True(chain.IsChain);
        Assert.Equal([6, 7, 3, 6, 7, 3], chain.Tokens);
    }

    [Fact]
    public void Prompt_lookup_options_are_validated_loudly()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new NGramDraft(16, new NGramOptions { MaxNgram = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new NGramDraft(16, new NGramOptions { MaxNgram = 2, MinNgram = 3 }));
        using var s = new NGramDraft(16).StartSession(8);
        Commit(s, (int[])[1, 2]);
        Assert.Throws<ArgumentException>(() => Row(s, 3, 5, -1));   // the root must sit right after the committed tokens
    }

    /// <summary>
    /// After rounds of drafting, rejection and commits, the draft model's next-token distribution equals a fresh forward
    /// of the same model over the same tokens: the kept scratch slots and the lazily run tokens are the right ones.
    /// </summary>
    [Theory]
    [InlineData(1)]   // chains
    [InlineData(3)]   // trees
    public void A_draft_models_cache_follows_the_accepted_tokens_exactly(int topK)
    {
        var model = TestAssets.Stories;
        using var draft = new DraftLmModel(model, model, ownsModel: false);
        using var s = draft.StartSession(128);
        var text = TestAssets.StoriesTokenizer.Encode("Once upon a time, there was a little girl named Lily. She liked to play", true);
        int committed = 5;
        Commit(s, text.AsSpan(0, committed));
        var rng = new Random(4);
        int steps = 0;
        while (committed + 6 < text.Length)
        {
            // Draft a tree from the true next token, then accept a random number of the true tokens (as if the target
            // had disagreed somewhere), and commit them: a mix of kept scratch slots and tokens the draft never ran.
            var tree = DraftTree.Build(s, null, text[committed], committed, 8, 4, topK, ref steps);
            s.EndRound();
            int accept = 1 + rng.Next(4);
            Commit(s, text.AsSpan(committed, accept));
            committed += accept;

            var row = Row(s, text[committed], committed, -1);
            s.EndRound();
            using var cache = model.NewCache();
            using var o = model.Forward(cache, text.AsSpan(0, committed + 1), Enumerable.Range(0, committed + 1).ToArray(), lastLogitsOnly: true);
            var expected = o.Logits.log_softmax(-1).data<float>().ToArray();
            for (int v = 0; v < expected.Length; v++) Assert.Equal(expected[v], row[v], 3e-4f);
            // A round that ends without a Commit is dropped by the next one.
            DraftTree.Build(s, null, text[committed], committed, 8, 4, topK, ref steps);
            s.EndRound();
        }
    }

    /// <summary>
    /// Keeping the accepted nodes' scratch slots and running the accepted tokens again give the same generation (both
    /// lossless); the draft time of each is printed, the measurement behind keeping the slots (docs/benchmarks.md).
    /// </summary>
    [Fact]
    public void Keeping_accepted_slots_and_rerunning_accepted_tokens_decode_alike()
    {
        var target = TestAssets.Stories5M;
        var budget = new SpeculativeOptions { TreeTokens = 9, TreeDepth = 8, TreeTopK = 1, TreeMinProb = 0.05 };
        var results = new List<(bool Keep, double DraftMs, int[] Ids, double Tau)>();
        for (int pass = 0; pass < 4; pass++)
            foreach (var keep in new[] { true, false })
            {
                using var draft = new DraftLmModel(TestAssets.Stories, target, ownsModel: false) { KeepAcceptedSlots = keep };
                var g = new Generator(target, TestAssets.StoriesTokenizer, draft);
                var r = g.Complete("Once upon a time", new GenerationOptions { MaxNewTokens = 200, Speculative = budget });
                results.Add((keep, r.Stats.DraftSeconds * 1000, r.TokenIds, r.Stats.AcceptanceLength));
            }
        Assert.All(results, r => Assert.Equal(results[0].Ids, r.Ids));
        foreach (var keep in new[] { true, false })
        {
            var ms = results.Where(r => r.Keep == keep).Select(r => r.DraftMs).Order().ToArray();
            output.WriteLine($"keep slots {keep}: draft ms per generation {string.Join(", ", ms.Select(x => x.ToString("F2")))}; tau {results.First(r => r.Keep == keep).Tau:F2}");
        }
    }

    [Fact]
    public void A_draft_model_of_another_vocabulary_or_tokenizer_is_refused_with_the_reason()
    {
        using var w = LlamaWeights.Random(TestAssets.Stories.Config with { VocabSize = 256, Layers = 1 }, seed: 1);
        using var other = new LlamaModel(w);
        var e = Assert.Throws<ArgumentException>(() => new DraftLmModel(other, TestAssets.Stories, ownsModel: false));
        Assert.Contains("256 tokens, the target's 512", e.Message);
        var renamed = new RenamedToken(TestAssets.StoriesTokenizer, 300);
        e = Assert.Throws<ArgumentException>(() => new DraftLmModel(TestAssets.Stories, TestAssets.Stories, ownsModel: false, (renamed, TestAssets.StoriesTokenizer)));
        Assert.Contains("token 300", e.Message);
        Assert.Contains("tokenizer", e.Message);
    }

    /// <summary>A tokenizer that differs from another in one token's bytes.</summary>
    sealed class RenamedToken(ITokenizer inner, int token) : ITokenizer
    {
        public int VocabSize => inner.VocabSize;
        public int BosId => inner.BosId;
        public int[] Encode(string text, bool addBos) => inner.Encode(text, addBos);
        public ReadOnlySpan<byte> TokenBytes(int t, int previous) => t == token ? "zz"u8 : inner.TokenBytes(t, previous);
        public bool IsSpecial(int t) => inner.IsSpecial(t);
    }

    [Fact]
    public void Training_free_drafts_identify_themselves_for_the_budget_cache()
    {
        using var a = new NGramDraft(512);
        using var b = new NGramDraft(512, new NGramOptions { MaxNgram = 4 });
        Assert.NotEqual(TreeBudgetCalibrator.DraftIdentity(a), TreeBudgetCalibrator.DraftIdentity(b));
        using var self = new DraftLmModel(TestAssets.Stories, TestAssets.Stories, ownsModel: false);
        using var bigger = new DraftLmModel(TestAssets.Stories5M, TestAssets.Stories, ownsModel: false);
        Assert.NotEqual(TreeBudgetCalibrator.DraftIdentity(self), TreeBudgetCalibrator.DraftIdentity(bigger));
    }
}
