using Beagle.Decoding;
using Beagle.Drafting;
using Xunit;
using Xunit.Abstractions;

namespace Beagle.Tests.Decoding;

/// <summary>
/// The multi-candidate acceptance step on synthetic distributions: whatever the tree proposes, the emitted tokens
/// must follow the target distribution p exactly (here: to within 5 standard errors of 200,000 seeded draws). The same
/// statistic, run on the rule with one step deliberately broken, must exceed that bound: the test can fail.
/// </summary>
public class SamplingAcceptanceTests(ITestOutputHelper output)
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

    static readonly float[] P6 = Normalise(0.30f, 0.05f, 0.25f, 0.0f, 0.15f, 0.25f);
    static readonly int[][] ChildSets = [[2], [2, 0, 5], [3, 1], [0, 1, 2, 3, 4, 5]];
    const int Draws = 200_000;
    /// <summary>Largest |z| a correct rule may show (5 standard errors: a false alarm about once in 300,000 tokens tested).</summary>
    const double MaxZ = 5;

    /// <summary>
    /// The first emitted token's frequencies over <see cref="Draws"/> seeded acceptances against p: the largest |z| over
    /// tokens (z = (frequency - p) / standard error), and the counts.
    /// </summary>
    static (double MaxZ, int[] Counts) FirstTokenDeviation(float[] p, int[] children, AcceptanceMutation mutation = AcceptanceMutation.None)
    {
        var tree = Tree(children);
        var sampler = new Sampler(T1);
        var counts = new int[p.Length];
        for (int i = 0; i < Draws; i++)
        {
            var (path, bonus) = Verifier.AcceptSampling(tree, _ => (float[])p.Clone(), sampler, mutation);
            int first = path.Count > 1 ? tree.Tokens[path[1]] : bonus;
            counts[first]++;
        }
        double z = 0;
        for (int x = 0; x < p.Length; x++)
        {
            double dev = Math.Abs(counts[x] / (double)Draws - p[x]);
            double se = Math.Sqrt(p[x] * (1 - p[x]) / Draws);
            z = Math.Max(z, se > 0 ? dev / se : dev > 0 ? double.PositiveInfinity : 0);   // p = 0 emitted at all: infinitely far
        }
        return (z, counts);
    }

    [Fact]
    public void First_token_follows_p_whatever_the_children_are()
    {
        foreach (var children in ChildSets)
        {
            var (z, counts) = FirstTokenDeviation(P6, children);
            output.WriteLine($"exact rule, children [{string.Join(",", children)}]: max |z| {z:F2} (bound {MaxZ})");
            Assert.True(z < MaxZ, $"children [{string.Join(",", children)}]: max |z| {z:F2}, frequencies [{string.Join(", ", counts.Select(c => (c / (double)Draws).ToString("F4")))}] vs p [{string.Join(", ", P6.Select(x => x.ToString("F4")))}]");
            Assert.Equal(0, counts[3]);   // p = 0 is never emitted, even when proposed
        }
    }

    /// <summary>
    /// Each broken step of the rule moves the first token's distribution by far more than the bound allows, for some
    /// proposal: no renormalisation needs a second child (the first is accepted with p(x) either way); the un-zeroed
    /// bonus and the unconditional first child show with one.
    /// </summary>
    [Theory]
    [InlineData(nameof(AcceptanceMutation.NoRenormalisation))]
    [InlineData(nameof(AcceptanceMutation.BonusFromUnzeroed))]
    [InlineData(nameof(AcceptanceMutation.AcceptFirstChild))]
    public void The_first_token_test_detects_each_broken_step_of_the_rule(string broken)
    {
        var mutation = Enum.Parse<AcceptanceMutation>(broken);
        // Proposals that leave some of p unproposed: when every token is proposed and rejected, a broken rule can leave
        // nothing to draw the bonus from, and it fails loudly instead of skewing the statistic.
        var worst = ChildSets.Where(c => c.Length < P6.Length).Select(c => (Children: c, FirstTokenDeviation(P6, c, mutation).MaxZ)).MaxBy(x => x.MaxZ);
        output.WriteLine($"{mutation}: max |z| {worst.MaxZ:F1} with children [{string.Join(",", worst.Children)}] (bound {MaxZ})");
        Assert.True(worst.MaxZ > MaxZ, $"{mutation} went unnoticed: max |z| {worst.MaxZ:F2} <= {MaxZ}");
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
        var m = tree.Mask(3);
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
