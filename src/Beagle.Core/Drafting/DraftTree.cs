using Beagle.Decoding;
using static TorchSharp.torch;

namespace Beagle.Drafting;

/// <summary>
/// One round's draft tree, flattened in breadth-first order: node 0 is the root (the pending token), every parent
/// precedes its children. Built by EAGLE-2's dynamic expansion (docs/method.md, "Drafting and the tree"): expand the best
/// <c>topK</c> frontier nodes by cumulative log-probability, record all their top-k children, keep the best top-k as
/// the next frontier, repeat <c>depth</c> times; then keep the best <c>tokens - 1</c> recorded nodes (a connected
/// tree: a child never outscores its parent, and ties prefer the shallower node).
/// </summary>
public sealed class DraftTree
{
    /// <summary>Token id of each node (target vocabulary).</summary>
    public int[] Tokens { get; }
    /// <summary>Parent index of each node (-1 for the root).</summary>
    public int[] Parents { get; }
    /// <summary>Depth of each node (root 0).</summary>
    public int[] Depths { get; }
    /// <summary>Children of each node, best first. Built on first use: a chain's verification never needs them.</summary>
    public int[][] Children => _children ??= BuildChildren(Parents);
    int[][]? _children;
    public int Count => Tokens.Length;
    /// <summary>Every node is the child of the one before it (top-k 1, or a tree that kept one path): its tree mask is causal.</summary>
    public bool IsChain { get; }

    DraftTree(int[] tokens, int[] parents, int[] depths)
    {
        Tokens = tokens; Parents = parents; Depths = depths;
        bool chain = true;
        for (int i = 1; i < parents.Length && chain; i++) chain = parents[i] == i - 1;
        IsChain = chain;
    }

    static int[][] BuildChildren(int[] parents)
    {
        var kids = new List<int>[parents.Length];
        for (int i = 0; i < kids.Length; i++) kids[i] = [];
        for (int i = 1; i < parents.Length; i++) kids[parents[i]].Add(i);   // added in score order (see Build)
        return kids.Select(k => k.ToArray()).ToArray();
    }

    /// <summary>A tree from explicit arrays (breadth-first: every parent before its children). For tests and tools.</summary>
    public static DraftTree FromArrays(int[] tokens, int[] parents, int[] depths)
    {
        if (tokens.Length == 0 || tokens.Length != parents.Length || tokens.Length != depths.Length) throw new ArgumentException("tokens, parents and depths must have the same non-zero length");
        for (int i = 1; i < tokens.Length; i++)
            if (parents[i] < 0 || parents[i] >= i || depths[i] != depths[parents[i]] + 1) throw new ArgumentException($"node {i}: parent must come earlier and be one level shallower");
        return new DraftTree(tokens, parents, depths);
    }

    /// <summary>A tree with only the root (used when no draft token fits).</summary>
    public static DraftTree RootOnly(int root) => new([root], [-1], [0]);

    /// <summary>Per-node candidate recorded during expansion.</summary>
    record struct Candidate(int Token, int Parent /* candidate index, -1 = root */, int Depth, float Score, int Expansion /* draft-session node id once expanded, else -1 */);

    /// <summary>
    /// Builds the tree for one round. The session must have the committed context; <paramref name="root"/> is the
    /// pending token at position <paramref name="rootPosition"/>. Calls EndRound is the caller's job.
    /// </summary>
    /// <param name="draftSteps">Incremented once per draft forward.</param>
    /// <param name="minLogProb">
    /// Confidence floor: a node whose cumulative draft log-probability (the log of the path's probability under the
    /// draft, EAGLE-2's node value) is below it is neither expanded nor kept, and drafting stops early once no frontier
    /// node clears it. Negative infinity (the default) keeps EAGLE-2's fixed-size tree; a finite floor makes the tree as
    /// deep as the draft is sure and as small as it is unsure, which pays where every verified token costs FLOPs (CPU).
    /// </param>
    public static DraftTree Build(IDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition,
        int totalTokens, int depth, int topK, ref int draftSteps, float minLogProb = float.NegativeInfinity)
    {
        if (totalTokens <= 1 || depth < 1) return RootOnly(root);
        return topK == 1
            ? BuildChain(session, draftToTarget, root, rootPosition, Math.Min(totalTokens - 1, depth), ref draftSteps, minLogProb)
            : BuildTree(session, draftToTarget, root, rootPosition, totalTokens, depth, topK, ref draftSteps, minLogProb);
    }

    /// <summary>
    /// Top-k 1: the tree <see cref="BuildTree"/> would give, without its sorting and bookkeeping (a few microseconds a
    /// round, which a CPU round cannot spare): cumulative scores only fall along a chain, so its rerank keeps a prefix.
    /// Stops after <paramref name="length"/> draft tokens, where the general search would draft to the full depth and
    /// then drop what exceeds the token budget.
    /// </summary>
    internal static DraftTree BuildChain(IDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition,
        int length, ref int draftSteps, float minLogProb)
    {
        if (session.ArrayPath is { } fast) return BuildChain(fast, draftToTarget, root, rootPosition, length, ref draftSteps, minLogProb);
        var tokens = new List<int>(length + 1) { root };
        float score = 0;
        for (int d = 1; d <= length; d++)
        {
            // Expand the node at depth d-1; session node ids are expansion order, so its parent is node d-2 (root: none).
            Expand(session, [tokens[d - 1]], [rootPosition + d - 1], [d - 2], 1, draftToTarget, out var tok, out var lp);
            draftSteps++;
            if (float.IsNegativeInfinity(lp[0, 0])) break;   // no proposal here (a point-mass draft with nothing to say)
            score += lp[0, 0];
            if (!(score >= minLogProb)) break;
            tokens.Add(tok[0, 0]);
        }
        int n = tokens.Count;
        return new DraftTree([.. tokens], Enumerable.Range(-1, n).ToArray(), Enumerable.Range(0, n).ToArray());
    }

    /// <summary>
    /// <see cref="BuildChain(IDraftSession, IReadOnlyList{int}?, int, int, int, ref int, float)"/> over an array session,
    /// allocating only the tree's own three arrays: the inputs live on the stack and the top-1 is read from the session's
    /// buffer (the same choice as <see cref="TopK"/>: the first maximum).
    /// </summary>
    static DraftTree BuildChain(IArrayDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition,
        int length, ref int draftSteps, float minLogProb)
    {
        Span<int> chain = stackalloc int[length + 1];
        Span<int> token = stackalloc int[1], position = stackalloc int[1], parent = stackalloc int[1];
        chain[0] = root;
        int n = 1;
        float score = 0;
        for (int d = 1; d <= length; d++)
        {
            token[0] = chain[d - 1]; position[0] = rootPosition + d - 1; parent[0] = d - 2;
            var row = session.ExpandToBuffer(token, position, parent);   // [Vd]
            draftSteps++;
            int best = 0;
            for (int v = 1; v < row.Length; v++) if (row[v] > row[best]) best = v;
            if (float.IsNegativeInfinity(row[best])) break;   // no proposal here: the chain ends
            score += row[best];
            if (!(score >= minLogProb)) break;
            chain[n++] = draftToTarget is null ? best : draftToTarget[best];
        }
        var tokens = chain[..n].ToArray(); var parents = new int[n]; var depths = new int[n];
        for (int i = 0; i < n; i++) { parents[i] = i - 1; depths[i] = i; }
        return new DraftTree(tokens, parents, depths);
    }

    /// <summary>EAGLE-2's search (see the class summary), any top-k.</summary>
    internal static DraftTree BuildTree(IDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition,
        int totalTokens, int depth, int topK, ref int draftSteps, float minLogProb)
    {
        var cands = new List<Candidate>(depth * topK * topK);
        int expansions = 0;

        // Depth 1: expand the root.
        Expand(session, [root], [rootPosition], [-1], topK, draftToTarget, out var tok, out var lp);
        draftSteps++;
        int rootExpansion = expansions++;
        var frontier = new List<int>(topK);
        for (int j = 0; j < tok.GetLength(1); j++)
        {
            // Best first: the rest are lower. A token of probability 0 is never a node, whatever the floor (a draft
            // whose distribution is a point mass, or that has no proposal, gives -inf to the rest).
            if (!(lp[0, j] >= minLogProb) || float.IsNegativeInfinity(lp[0, j])) break;
            cands.Add(new Candidate(tok[0, j], -1, 1, lp[0, j], -1));
            frontier.Add(cands.Count - 1);
        }

        // A round holds at most MaxRoundNodes expanded nodes (the sessions' per-round buffers): with a wide frontier the
        // tree stops growing there instead of failing mid-generation (1 + topK * (depth - 1) nodes would be expanded).
        for (int d = 2; d <= depth && frontier.Count > 0 && expansions + frontier.Count <= DraftModelBase.MaxRoundNodes; d++)
        {
            // Expand the frontier: each node's parent in the session is its parent's expansion (root = rootExpansion).
            int m = frontier.Count;
            var tokens = new int[m]; var positions = new int[m]; var parents = new int[m];
            for (int i = 0; i < m; i++)
            {
                var c = cands[frontier[i]];
                tokens[i] = c.Token; positions[i] = rootPosition + c.Depth;
                parents[i] = c.Parent < 0 ? rootExpansion : cands[c.Parent].Expansion;
                cands[frontier[i]] = c with { Expansion = expansions + i };
            }
            expansions += m;
            Expand(session, tokens, positions, parents, topK, draftToTarget, out tok, out lp);
            draftSteps++;
            // All children of the frontier, scored cumulatively; the best topK become the next frontier.
            int first = cands.Count;
            for (int i = 0; i < m; i++)
            {
                float ps = cands[frontier[i]].Score;
                for (int j = 0; j < tok.GetLength(1); j++)
                    if (ps + lp[i, j] >= minLogProb && !float.IsNegativeInfinity(lp[i, j])) cands.Add(new Candidate(tok[i, j], frontier[i], d, ps + lp[i, j], -1));
            }
            var next = Enumerable.Range(first, cands.Count - first).OrderByDescending(i => cands[i].Score).ThenBy(i => i).Take(topK).ToList();
            if (d < depth) frontier = next;
        }

        // Rerank every recorded node; keep the best totalTokens-1. Ties prefer shallower (then earlier) nodes, so a
        // kept node's parent is always kept: parent score >= child score, and the parent is shallower and earlier.
        var keep = Enumerable.Range(0, cands.Count)
            .OrderByDescending(i => cands[i].Score).ThenBy(i => cands[i].Depth).ThenBy(i => i)
            .Take(totalTokens - 1).ToList();
        // Breadth-first order: by depth, then by score (so Children lists are best first).
        keep.Sort((a, b) => cands[a].Depth != cands[b].Depth ? cands[a].Depth.CompareTo(cands[b].Depth)
                          : cands[b].Score != cands[a].Score ? cands[b].Score.CompareTo(cands[a].Score) : a.CompareTo(b));
        var index = new Dictionary<int, int>(keep.Count);
        int n = keep.Count + 1;
        var outTokens = new int[n]; var outParents = new int[n]; var outDepths = new int[n];
        outTokens[0] = root; outParents[0] = -1;
        for (int i = 0; i < keep.Count; i++)
        {
            var c = cands[keep[i]];
            index[keep[i]] = i + 1;
            outTokens[i + 1] = c.Token; outDepths[i + 1] = c.Depth;
            outParents[i + 1] = c.Parent < 0 ? 0 : index.TryGetValue(c.Parent, out var p) ? p
                : throw new InvalidOperationException("draft tree is not connected (a kept node's parent was dropped)");
        }
        return new DraftTree(outTokens, outParents, outDepths);
    }

    /// <summary>One draft forward; returns the top-k (target-vocabulary) tokens and log-probs of each node.</summary>
    static void Expand(IDraftSession session, int[] tokens, int[] positions, int[] parents, int topK,
        IReadOnlyList<int>? map, out int[,] topTokens, out float[,] topLogp)
    {
        if (session.ArrayPath is { } fast)
        {
            var lp = fast.ExpandToBuffer(tokens, positions, parents);   // [m * Vd], the session's buffer
            int vd = fast.VocabSize, kk = Math.Min(topK, vd), rows = tokens.Length;
            topTokens = new int[rows, kk]; topLogp = new float[rows, kk];
            for (int i = 0; i < rows; i++) TopK(lp.Slice(i * vd, vd), kk, map, topTokens, topLogp, i);
            return;
        }
        using var scope = NewDisposeScope();
        var logp = session.Expand(tokens, positions, parents);      // [m, Vd]
        int m = tokens.Length, k = (int)Math.Min(topK, logp.shape[1]);
        var (vals, idx) = logp.topk(k, dim: -1);
        if (vals.device_type != TorchSharp.DeviceType.CPU) { vals = vals.cpu(); idx = idx.cpu(); }   // .cpu() is an op even on the CPU
        var v = vals.data<float>().ToArray();
        var ix = idx.data<long>().ToArray();
        topTokens = new int[m, k]; topLogp = new float[m, k];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < k; j++)
            {
                int di = (int)ix[i * k + j];
                topTokens[i, j] = map is null ? di : map[di];
                topLogp[i, j] = v[i * k + j];
            }
    }

    /// <summary>Top-k of one row by insertion (k is small); ties keep the lower index first, as torch.topk does.</summary>
    static void TopK(ReadOnlySpan<float> row, int k, IReadOnlyList<int>? map, int[,] tokens, float[,] values, int r)
    {
        Span<int> idx = stackalloc int[k];
        Span<float> val = stackalloc float[k];
        int n = 0;
        for (int v = 0; v < row.Length; v++)
        {
            float x = row[v];
            if (n == k && !(x > val[k - 1])) continue;
            int j = n < k ? n++ : k - 1;
            while (j > 0 && x > val[j - 1]) { val[j] = val[j - 1]; idx[j] = idx[j - 1]; j--; }
            val[j] = x; idx[j] = v;
        }
        for (int j = 0; j < k; j++) { tokens[r, j] = map is null ? idx[j] : map[idx[j]]; values[r, j] = val[j]; }
    }

    /// <summary>
    /// Tree attention mask for verification, on the host: [N, contextLength + N] row-major; every node sees the whole
    /// committed context and its own ancestors (itself included). What <c>LlamaModel.Forward(cache, tokens, positions,
    /// allowed)</c> takes; the engine itself passes <see cref="Parents"/> to the batched forward instead.
    /// </summary>
    public bool[] Mask(int contextLength)
    {
        int n = Count, s = contextLength + n;
        var data = new bool[n * s];
        for (int i = 0; i < n; i++)
        {
            Array.Fill(data, true, i * s, contextLength);
            for (int a = i; a >= 0; a = Parents[a]) data[i * s + contextLength + a] = true;
        }
        return data;
    }

    /// <summary>Rotary positions of the nodes: contextLength + depth.</summary>
    public int[] Positions(int contextLength)
    {
        var p = new int[Depths.Length];
        for (int i = 0; i < p.Length; i++) p[i] = contextLength + Depths[i];
        return p;
    }
}
