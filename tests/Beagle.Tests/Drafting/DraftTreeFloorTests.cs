using Beagle.Drafting;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Drafting;

/// <summary>
/// The confidence floor of <see cref="DraftTree.Build"/>, checked against path probabilities computed independently
/// from a Markov draft's table (the draft's log P(next | prev) summed along each node's path).
/// </summary>
public class DraftTreeFloorTests
{
    static readonly Lazy<MarkovDraft> Bigram = new(() => MarkovDraft.Bigram(TestAssets.StoriesTokenizer, TestAssets.TinyStories, 512));

    static float PathLogProb(MarkovDraft d, DraftTree t, int node)
    {
        float s = 0;
        for (int i = node; t.Parents[i] >= 0; i = t.Parents[i]) s += d.LogProb(t.Tokens[t.Parents[i]], t.Tokens[i]);
        return s;
    }

    static DraftTree Build(MarkovDraft d, int root, int tokens, int depth, int topK, float minLogProb, out int steps)
    {
        steps = 0;
        using var session = d.StartSession(64);
        var tree = DraftTree.Build(session, null, root, 10, tokens, depth, topK, ref steps, minLogProb);
        session.EndRound();
        return tree;
    }

    [Theory]
    [InlineData(11, 10, 1, 0.05)]
    [InlineData(16, 8, 4, 0.02)]
    [InlineData(32, 6, 8, 0.1)]
    public void Every_kept_node_clears_the_floor_and_no_better_node_is_dropped(int tokens, int depth, int topK, double floor)
    {
        var d = Bigram.Value;
        var lf = MathF.Log((float)floor);
        foreach (var root in TestAssets.StoriesTokenizer.Encode("Once upon a time there was a little girl", true))
        {
            var tree = Build(d, root, tokens, depth, topK, lf, out _);
            var full = Build(d, root, tokens, depth, topK, float.NegativeInfinity, out _);
            for (int i = 1; i < tree.Count; i++)
                Assert.True(PathLogProb(d, tree, i) >= lf - 1e-5f, $"root {root}: node {i} below the floor");
            // A chain (node i at depth i) verifies with the plain causal mask; anything with siblings needs the tree mask.
            Assert.Equal(Enumerable.Range(0, tree.Count).All(i => tree.Depths[i] == i), tree.IsChain);
            // The floor only removes: every node of the floored tree whose path clears the floor in the unfloored tree is
            // there too, up to the token budget (the unfloored tree keeps the best nodes; the floor drops a suffix of them).
            int clearing = Enumerable.Range(1, full.Count - 1).Count(i => PathLogProb(d, full, i) >= lf);
            Assert.True(tree.Count - 1 >= Math.Min(clearing, tokens - 1) || tree.Count == tokens,
                $"root {root}: floored tree has {tree.Count - 1} nodes, the unfloored one {clearing} above the floor");
        }
    }

    [Theory]
    [InlineData(6, 5, float.NegativeInfinity)]
    [InlineData(4, 8, float.NegativeInfinity)]   // the token budget, not the depth, ends the chain
    [InlineData(11, 10, -3f)]                    // a floor
    public void The_chain_fast_path_gives_the_general_search_s_tree(int tokens, int depth, float minLogProb)
    {
        var d = Bigram.Value;
        foreach (var root in TestAssets.StoriesTokenizer.Encode("Once upon a time there was a little girl", true))
        {
            int s1 = 0, s2 = 0;
            using var a = new RecordingSession(d.StartSession(64)); using var b = new RecordingSession(d.StartSession(64));
            var chain = DraftTree.BuildChain(a, null, root, 10, Math.Min(tokens - 1, depth), ref s1, minLogProb);
            var general = DraftTree.BuildTree(b, null, root, 10, tokens, depth, 1, ref s2, minLogProb);
            Assert.Equal(general.Tokens, chain.Tokens);
            Assert.Equal(general.Parents, chain.Parents);
            Assert.Equal(general.Depths, chain.Depths);
            Assert.True(s1 <= s2);
            // Same draft calls (token, position, parent id), so a real session attends the same ancestors either way.
            Assert.Equal(b.Calls.Take(a.Calls.Count), a.Calls);
        }
    }

    /// <summary>Records every Expand call (one node each here) as "token@position^parent".</summary>
    sealed class RecordingSession(Beagle.Drafting.IDraftSession inner) : Beagle.Drafting.IDraftSession
    {
        public List<string> Calls { get; } = [];
        public int Length => inner.Length;
        public bool ConcatDraftStates { get => inner.ConcatDraftStates; set => inner.ConcatDraftStates = value; }
        public long StateBytes => inner.StateBytes;
        public void Commit(ReadOnlySpan<int> tokens, TorchSharp.torch.Tensor hidden) => inner.Commit(tokens, hidden);
        public TorchSharp.torch.Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
        {
            for (int i = 0; i < tokens.Length; i++) Calls.Add($"{tokens[i]}@{positions[i]}^{parents[i]}");
            return inner.Expand(tokens, positions, parents);
        }
        public void EndRound() => inner.EndRound();
        public void Dispose() => inner.Dispose();
    }

    [Fact]
    public void A_floor_above_every_first_step_gives_the_root_only_after_one_draft_step()
    {
        var d = Bigram.Value;
        int root = TestAssets.StoriesTokenizer.Encode("Once", true)[^1];
        var tree = Build(d, root, 11, 10, 1, MathF.Log(0.999f), out int steps);
        Assert.Equal(1, tree.Count);
        Assert.Equal(1, steps);
    }

    [Fact]
    public void A_chain_stops_drafting_where_the_path_falls_below_the_floor()
    {
        var d = Bigram.Value;
        int root = TestAssets.StoriesTokenizer.Encode("Once upon", true)[^1];
        var full = Build(d, root, 21, 20, 1, float.NegativeInfinity, out int fullSteps);
        Assert.Equal(20, fullSteps);
        // Floor halfway down the full chain's path probability: the floored chain is the full chain's prefix that clears it.
        float lf = PathLogProb(d, full, 10) + 1e-3f;
        int expected = Enumerable.Range(1, full.Count - 1).Count(i => PathLogProb(d, full, i) >= lf);
        var cut = Build(d, root, 21, 20, 1, lf, out int steps);
        Assert.Equal(full.Tokens[..(expected + 1)].ToArray(), cut.Tokens.ToArray());
        Assert.True(steps <= expected + 1 && steps < fullSteps, $"{steps} draft steps for a chain of {expected}");
    }
}
