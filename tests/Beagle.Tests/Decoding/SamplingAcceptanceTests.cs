using Beagle.Decoding;
using Beagle.Drafting;
using Xunit;

namespace Beagle.Tests.Decoding;

/// <summary>
/// The multi-candidate acceptance step on synthetic distributions: whatever the tree proposes, the emitted tokens
/// must follow the target distribution p exactly (here: to within 5 standard errors of 200,000 seeded draws).
/// </summary>
public class SamplingAcceptanceTests
{
    static readonly SamplingOptions T1 = new() { Temperature = 1f, Seed = 11 };

    /// <summary>root → children (depth 1) with the given tokens; optional grandchildren under the first child.</summary>
    static DraftTree Tree(int[] children, int[]? grandchildren = null)
    {
        var tokens = new List<int> { 99 }; var parents = new List<int> { -1 }; var depths = new List<int> { 0 };
        foreach (var c in children) { tokens.Add(c); parents.Add(0); depths.Add(1); }
        foreach (var g in grandchildren ?? []) { tokens.Add(g); parents.Add(1); depths.Add(2); }
        return DraftTree.FromArrays(tokens.ToArray(), parents.ToArray(), depths.ToArray());
    }

    static float[] Normalise(params float[] w) { var s = w.Sum(); return w.Select(x => x / s).ToArray(); }

    [Fact]
    public void First_token_follows_p_whatever_the_children_are()
    {
        var p = Normalise(0.30f, 0.05f, 0.25f, 0.0f, 0.15f, 0.25f);
        foreach (var children in new[] { new[] { 2 }, new[] { 2, 0, 5 }, new[] { 3, 1 }, new[] { 0, 1, 2, 3, 4, 5 } })
        {
            var tree = Tree(children);
            var sampler = new Sampler(T1);
            var counts = new int[p.Length];
            const int N = 200_000;
            for (int i = 0; i < N; i++)
            {
                var (path, bonus) = Verifier.AcceptSampling(tree, _ => (float[])p.Clone(), sampler);
                int first = path.Count > 1 ? tree.Tokens[path[1]] : bonus;
                counts[first]++;
            }
            for (int x = 0; x < p.Length; x++)
            {
                double se = Math.Sqrt(p[x] * (1 - p[x]) / N) + 1e-9;
                Assert.True(Math.Abs(counts[x] / (double)N - p[x]) < 5 * se + 1e-6,
                    $"children [{string.Join(",", children)}], token {x}: {counts[x] / (double)N:F4} vs p = {p[x]:F4}");
            }
            Assert.Equal(0, counts[3]);   // p = 0 is never emitted, even when proposed
        }
    }

    [Fact]
    public void Two_levels_follow_the_joint_distribution()
    {
        var p1 = Normalise(0.5f, 0.3f, 0.2f);                 // after the root
        var p2 = Normalise(0.1f, 0.6f, 0.3f);                 // after token 1 (the first child)
        var pOther = Normalise(0.3f, 0.3f, 0.4f);             // after any other token (bonus from the root's row is not continued)
        var tree = Tree([1, 0], [1, 2]);
        var sampler = new Sampler(T1);
        var joint = new int[3, 3]; int firstOnly = 0;
        const int N = 200_000;
        for (int i = 0; i < N; i++)
        {
            var (path, bonus) = Verifier.AcceptSampling(tree, node => (float[])(node == 1 ? p2 : node == 0 ? p1 : pOther).Clone(), sampler);
            var toks = path.Skip(1).Select(n => tree.Tokens[n]).Append(bonus).ToArray();
            if (toks.Length >= 2) joint[toks[0], toks[1]]++; else firstOnly++;
        }
        // Every outcome here emits two tokens when the first accepted token is 1 (its row p2 decides the second).
        for (int y = 0; y < 3; y++)
        {
            double expected = p1[1] * p2[y], got = joint[1, y] / (double)N;
            Assert.True(Math.Abs(got - expected) < 5 * Math.Sqrt(expected * (1 - expected) / N), $"P(1,{y}) = {got:F4}, expected {expected:F4}");
        }
        double first0 = (joint[0, 0] + joint[0, 1] + joint[0, 2] + firstOnly) / (double)N;
        Assert.InRange(first0 + (joint[2, 0] + joint[2, 1] + joint[2, 2]) / (double)N, p1[0] + p1[2] - 0.01, p1[0] + p1[2] + 0.01);
    }

    [Fact]
    public void Greedy_acceptance_takes_the_longest_matching_path_then_the_target_token()
    {
        // root(99) → 1, 2 ; 1 → 3, 4
        var tree = Tree([1, 2], [3, 4]);
        // argmax after each node (index = node): root→1 (node 1), node 1→4 (node 4), node 4→7 (bonus)
        var argmax = new long[] { 1, 4, 0, 0, 7 };
        var (path, bonus) = Verifier.AcceptGreedy(tree, argmax);
        Assert.Equal([0, 1, 4], path);
        Assert.Equal(7, bonus);
        var (path2, bonus2) = Verifier.AcceptGreedy(tree, [5, 0, 0, 0, 0]);
        Assert.Equal([0], path2);
        Assert.Equal(5, bonus2);
    }

    [Fact]
    public void Tree_mask_lets_each_node_see_context_and_its_ancestors_only()
    {
        var tree = Tree([1, 2], [3, 4]);
        using var mask = tree.Mask(3, TorchSharp.torch.CPU);
        var m = mask.data<bool>().ToArray();
        int s = 3 + tree.Count;
        for (int i = 0; i < tree.Count; i++)
            for (int j = 0; j < s; j++)
            {
                bool expected = j < 3 || IsAncestorOrSelf(tree, j - 3, i);
                Assert.Equal(expected, m[i * s + j]);
            }
        Assert.Equal([3, 4, 4, 5, 5], tree.Positions(3));
    }

    static bool IsAncestorOrSelf(DraftTree t, int a, int node) { for (int x = node; x >= 0; x = t.Parents[x]) if (x == a) return true; return false; }
}
