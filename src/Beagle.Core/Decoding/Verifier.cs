using Beagle.Drafting;

namespace Beagle.Decoding;

/// <summary>
/// Chooses the accepted path of a verified draft tree (docs/method.md, "Verification").
/// Greedy: the longest root-to-leaf path whose tokens equal the target's argmax, then the target's next token.
/// Sampling: at each accepted node, try its children best-first; child x is accepted with probability p(x)
/// (tree tokens are chosen deterministically, so q(x) = 1); on rejection p(x) := 0 and p is renormalised; if every
/// child fails, the bonus token is drawn from what remains of p. The output distribution is exactly p, the same
/// distribution plain sampling draws from (temperature, top-k, top-p applied by <see cref="Sampler.Probabilities"/>).
/// </summary>
public static class Verifier
{
    /// <param name="argmax">Target argmax after each tree node, [N].</param>
    /// <returns>Accepted node indices (root first) and the bonus token.</returns>
    public static (List<int> Path, int Bonus) AcceptGreedy(DraftTree tree, ReadOnlySpan<long> argmax)
    {
        Span<int> path = tree.Count <= 256 ? stackalloc int[tree.Count] : new int[tree.Count];
        int n = AcceptGreedy(tree, argmax, path, out int bonus);
        return ([.. path[..n]], bonus);
    }

    /// <summary>
    /// <see cref="AcceptGreedy(DraftTree, ReadOnlySpan{long})"/> into <paramref name="path"/> (at least tree.Count
    /// long: a path never holds more nodes than the tree); returns the path's length. No allocation (decode rounds).
    /// </summary>
    internal static int AcceptGreedy(DraftTree tree, ReadOnlySpan<long> argmax, Span<int> path, out int bonus)
    {
        var tokens = tree.Tokens;
        path[0] = 0;
        int n = 1, cur = 0;
        while (true)
        {
            int want = (int)argmax[cur], next = -1;
            if (tree.IsChain) { if (cur + 1 < tree.Count && tokens[cur + 1] == want) next = cur + 1; }   // the one child
            else foreach (var c in tree.ChildrenOf(cur)) if (tokens[c] == want) { next = c; break; }
            if (next < 0) { bonus = want; return n; }
            path[n++] = next; cur = next;
        }
    }

    /// <param name="probabilities">Returns the sampling distribution after node i (computed lazily: only accepted nodes are asked).</param>
    public static (List<int> Path, int Bonus) AcceptSampling(DraftTree tree, Func<int, float[]> probabilities, Sampler sampler)
        => AcceptSampling(tree, probabilities, sampler, AcceptanceMutation.None);

    /// <summary>The sampling acceptance with one step of the rule deliberately broken (<paramref name="mutation"/>; tests only).</summary>
    internal static (List<int> Path, int Bonus) AcceptSampling(DraftTree tree, Func<int, float[]> probabilities, Sampler sampler, AcceptanceMutation mutation)
    {
        Span<int> path = tree.Count <= 256 ? stackalloc int[tree.Count] : new int[tree.Count];
        int n = AcceptSampling(tree, new ArrayDistributions(probabilities), sampler, mutation, path, out int bonus);
        return ([.. path[..n]], bonus);
    }

    /// <summary>
    /// The sampling acceptance into <paramref name="path"/> (at least tree.Count long); returns the path's length.
    /// <paramref name="distributions"/> is a struct (decode rounds pass the forward's rows without a closure), and the
    /// span it returns for a node may be modified: rejected children are zeroed in it.
    /// </summary>
    internal static int AcceptSampling<TDistributions>(DraftTree tree, TDistributions distributions, Sampler sampler, AcceptanceMutation mutation, Span<int> path, out int bonus)
        where TDistributions : struct, INodeDistributions
    {
        path[0] = 0;
        int n = 1, cur = 0;
        while (true)
        {
            var p = distributions.After(cur);
            int accepted = -1;
            double mass = 1.0;   // remaining (unnormalised) mass of p after rejections
            foreach (var c in tree.ChildrenOf(cur))
            {
                if (mutation == AcceptanceMutation.AcceptFirstChild) { accepted = c; break; }
                int x = tree.Tokens[c];
                double px = mutation == AcceptanceMutation.NoRenormalisation ? p[x] : p[x] / mass;   // probability under the renormalised residual
                if (px > 0 && sampler.NextUniform() < px) { accepted = c; break; }
                mass -= p[x];
                if (mutation != AcceptanceMutation.BonusFromUnzeroed) p[x] = 0f;
                if (mass <= 1e-12) break;
            }
            if (accepted < 0) { bonus = sampler.Draw(p); return n; }
            path[n++] = accepted; cur = accepted;
        }
    }

    readonly struct ArrayDistributions(Func<int, float[]> probabilities) : INodeDistributions
    {
        public Span<float> After(int node) => probabilities(node);
    }
}

/// <summary>The sampling distribution after each node of a draft tree, asked for lazily (only accepted nodes are).</summary>
internal interface INodeDistributions
{
    /// <summary>The distribution after <paramref name="node"/>, [V], writable; valid until the next call.</summary>
    Span<float> After(int node);
}

/// <summary>
/// One step of the sampling acceptance rule broken on purpose, so that tests can show their statistics detect it: a
/// test of losslessness that passes whatever the rule does proves nothing. Never set outside tests.
/// </summary>
internal enum AcceptanceMutation
{
    /// <summary>The exact rule.</summary>
    None,
    /// <summary>After a rejection, the next child is accepted with p(x) instead of p(x) / (mass left): no renormalisation.</summary>
    NoRenormalisation,
    /// <summary>Rejected children keep their probability, so the bonus token is drawn from the un-zeroed distribution.</summary>
    BonusFromUnzeroed,
    /// <summary>The first child of every node is accepted without a draw.</summary>
    AcceptFirstChild,
}
