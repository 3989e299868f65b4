using Beagle.Decoding;
using static TorchSharp.torch;

namespace Beagle.Drafting;

/// <summary>
/// One round's draft tree, flattened in breadth-first order: node 0 is the root (the pending token), every parent
/// precedes its children. Built by EAGLE-2's dynamic expansion (docs/method.md, "Drafting and the tree"): expand the best
/// <c>topK</c> frontier nodes by cumulative log-probability, record all their top-k children, keep the best top-k as
/// the next frontier, repeat <c>depth</c> times; then keep the best <c>tokens - 1</c> recorded nodes (a connected
/// tree: a child never outscores its parent, and ties prefer the shallower node).
///
/// A decode strategy keeps one tree and rebuilds it every round (<see cref="Rebuild"/>): its arrays and the search's
/// scratch are reused, so a round's drafting allocates nothing once they have grown. The spans it hands out are views
/// of those arrays, valid until the next rebuild. <see cref="Build"/> makes a new tree (tests and tools).
/// </summary>
public sealed class DraftTree
{
    int[] _tokens = [], _parents = [], _depths = [];
    int[] _childStart = [], _children = [];   // children of node i: _children[_childStart[i] .. _childStart[i + 1]), best first
    bool _childrenBuilt;
    TreeSearch? _search;

    /// <summary>Token id of each node (target vocabulary).</summary>
    public ReadOnlySpan<int> Tokens => _tokens.AsSpan(0, Count);
    /// <summary>Parent index of each node (-1 for the root).</summary>
    public ReadOnlySpan<int> Parents => _parents.AsSpan(0, Count);
    /// <summary>Depth of each node (root 0).</summary>
    public ReadOnlySpan<int> Depths => _depths.AsSpan(0, Count);
    public int Count { get; private set; }
    /// <summary>Every node is the child of the one before it (top-k 1, or a tree that kept one path): its tree mask is causal.</summary>
    public bool IsChain { get; private set; }

    /// <summary>The arrays behind <see cref="Tokens"/> and <see cref="Parents"/> (longer than <see cref="Count"/>), for a forward's rows.</summary>
    internal int[] TokenBuffer => _tokens;
    internal int[] ParentBuffer => _parents;

    /// <summary>Children of <paramref name="node"/>, best first. Listed on first use: a chain's verification never needs them.</summary>
    public ReadOnlySpan<int> ChildrenOf(int node)
    {
        if (!_childrenBuilt) BuildChildren();
        return _children.AsSpan(_childStart[node], _childStart[node + 1] - _childStart[node]);
    }

    /// <summary>An empty tree, to be built by <see cref="Rebuild"/>.</summary>
    internal DraftTree() { }

    /// <summary>Room for <paramref name="n"/> nodes; the tree is empty until <see cref="Seal"/>.</summary>
    void Reserve(int n)
    {
        if (_tokens.Length < n) { _tokens = new int[n]; _parents = new int[n]; _depths = new int[n]; _childStart = new int[n + 1]; _children = new int[n]; }
        Count = 0; _childrenBuilt = false;
    }

    /// <summary>Ends a build: <paramref name="n"/> nodes are in the arrays.</summary>
    DraftTree Seal(int n)
    {
        Count = n;
        bool chain = true;
        for (int i = 1; i < n && chain; i++) chain = _parents[i] == i - 1;
        IsChain = chain;
        return this;
    }

    void BuildChildren()
    {
        // Counting sort by parent: children keep their node order, which is score order within a parent (see BuildTree).
        int n = Count;
        Array.Clear(_childStart, 0, n + 1);
        for (int i = 1; i < n; i++) _childStart[_parents[i] + 1]++;
        for (int i = 0; i < n; i++) _childStart[i + 1] += _childStart[i];
        Span<int> fill = n <= 256 ? stackalloc int[n] : new int[n];
        _childStart.AsSpan(0, n).CopyTo(fill);
        for (int i = 1; i < n; i++) _children[fill[_parents[i]]++] = i;
        _childrenBuilt = true;
    }

    /// <summary>A tree from explicit arrays (breadth-first: every parent before its children). For tests and tools.</summary>
    public static DraftTree FromArrays(int[] tokens, int[] parents, int[] depths)
    {
        if (tokens.Length == 0 || tokens.Length != parents.Length || tokens.Length != depths.Length) throw new ArgumentException("tokens, parents and depths must have the same non-zero length");
        for (int i = 1; i < tokens.Length; i++)
            if (parents[i] < 0 || parents[i] >= i || depths[i] != depths[parents[i]] + 1) throw new ArgumentException($"node {i}: parent must come earlier and be one level shallower");
        var t = new DraftTree();
        t.Reserve(tokens.Length);
        tokens.CopyTo(t._tokens, 0); parents.CopyTo(t._parents, 0); depths.CopyTo(t._depths, 0);
        return t.Seal(tokens.Length);
    }

    /// <summary>A tree with only the root (used when no draft token fits).</summary>
    public static DraftTree RootOnly(int root) => new DraftTree().SetRootOnly(root);

    DraftTree SetRootOnly(int root)
    {
        Reserve(1);
        (_tokens[0], _parents[0], _depths[0]) = (root, -1, 0);
        return Seal(1);
    }

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
        => new DraftTree().Rebuild(session, draftToTarget, root, rootPosition, totalTokens, depth, topK, ref draftSteps, minLogProb);

    /// <summary><see cref="Build"/> into this tree, reusing its arrays (the previous round's tree is gone).</summary>
    internal DraftTree Rebuild(IDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition,
        int totalTokens, int depth, int topK, ref int draftSteps, float minLogProb = float.NegativeInfinity)
    {
        if (totalTokens <= 1 || depth < 1) return SetRootOnly(root);
        return topK == 1
            ? ChainInto(session, draftToTarget, root, rootPosition, Math.Min(totalTokens - 1, depth), ref draftSteps, minLogProb)
            : BuildTreeInto(session, draftToTarget, root, rootPosition, totalTokens, depth, topK, ref draftSteps, minLogProb);
    }

    /// <summary>
    /// Top-k 1: the tree <see cref="BuildTree"/> would give, without its sorting and bookkeeping (a few microseconds a
    /// round, which a CPU round cannot spare): cumulative scores only fall along a chain, so its rerank keeps a prefix.
    /// Stops after <paramref name="length"/> draft tokens, where the general search would draft to the full depth and
    /// then drop what exceeds the token budget.
    /// </summary>
    internal static DraftTree BuildChain(IDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition,
        int length, ref int draftSteps, float minLogProb)
        => new DraftTree().ChainInto(session, draftToTarget, root, rootPosition, length, ref draftSteps, minLogProb);

    DraftTree ChainInto(IDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition,
        int length, ref int draftSteps, float minLogProb)
    {
        if (session.ArrayPath is { } fast) return ChainInto(fast, draftToTarget, root, rootPosition, length, ref draftSteps, minLogProb);
        Reserve(length + 1);
        var search = _search ??= new TreeSearch();
        _tokens[0] = root;
        int n = 1;
        float score = 0;
        for (int d = 1; d <= length; d++)
        {
            // Expand the node at depth d-1; session node ids are expansion order, so its parent is node d-2 (root: none).
            search.Tokens[0] = _tokens[d - 1]; search.Positions[0] = rootPosition + d - 1; search.Parents[0] = d - 2;
            int k = search.Expand(session, 1, 1, draftToTarget);
            draftSteps++;
            float lp = search.TopLogp[0];
            if (float.IsNegativeInfinity(lp)) break;   // no proposal here (a point-mass draft with nothing to say)
            score += lp;
            if (!(score >= minLogProb)) break;
            _tokens[n++] = search.TopTokens[0];
        }
        for (int i = 0; i < n; i++) { _parents[i] = i - 1; _depths[i] = i; }
        return Seal(n);
    }

    /// <summary>
    /// <see cref="BuildChain(IDraftSession, IReadOnlyList{int}?, int, int, int, ref int, float)"/> over an array session:
    /// the chain of <see cref="BuildChains"/> alone (inputs on the stack, the top-1 read from the session's buffer: the
    /// same choice as <see cref="TopK"/>, the first maximum).
    /// </summary>
    DraftTree ChainInto(IArrayDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition,
        int length, ref int draftSteps, float minLogProb)
    {
        var job = new ChainJob(this, session, draftToTarget, root, rootPosition, length, minLogProb);
        BuildChains(new Span<ChainJob>(ref job));
        draftSteps += job.Steps;
        return this;
    }

    /// <summary>
    /// A chain drafted in lockstep with other sequences' chains (<see cref="BuildChains"/>): its tree, session and
    /// budget as <see cref="BuildChain"/> takes them, and its progress.
    /// </summary>
    internal struct ChainJob
    {
        public DraftTree Tree;
        public IArrayDraftSession Session;
        public IReadOnlyList<int>? DraftToTarget;
        public int RootPosition, Length;
        public float MinLogProb;
        /// <summary>Draft steps taken (the caller adds them to its count).</summary>
        public int Steps;
        internal int Nodes;
        internal float Score;
        internal bool Ended;

        public ChainJob(DraftTree tree, IArrayDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition, int length, float minLogProb)
        {
            (Tree, Session, DraftToTarget, RootPosition, Length, MinLogProb) = (tree, session, draftToTarget, rootPosition, length, minLogProb);
            tree.Reserve(length + 1);
            tree._tokens[0] = root;
            Nodes = 1;
            Ended = length < 1;
        }
    }

    /// <summary>
    /// Several sequences' chains at once (or one: the single-chain builder is this), one draft step of every unfinished
    /// chain per pass: the steps of two sessions that can pair run together (<see cref="IPairedDraftSession.ExpandPair"/>, the draft's weights read once for both).
    /// Each tree is exactly the one <see cref="BuildChain"/> builds for its job alone (the paired step is bit-identical
    /// to a session's own), so a sequence's proposals do not depend on who drafts beside it. Callers end each session's
    /// round, as after BuildChain.
    /// </summary>
    internal static void BuildChains(Span<ChainJob> jobs)
    {
        Span<int> live = stackalloc int[jobs.Length];
        for (int d = 1; ; d++)
        {
            int n = 0;
            for (int j = 0; j < jobs.Length; j++) if (!jobs[j].Ended) live[n++] = j;
            if (n == 0) break;
            for (int k = 0; k < n; k++)
            {
                ref var a = ref jobs[live[k]];
                int ta = a.Tree._tokens[d - 1], pa = a.RootPosition + d - 1;
                if (k + 1 < n && a.Session is IPairedDraftSession sa && jobs[live[k + 1]].Session is IPairedDraftSession sb && sa.CanPairWith(sb))
                {
                    ref var b = ref jobs[live[k + 1]];
                    var rowA = sa.ExpandPair(ta, pa, d - 2, sb, b.Tree._tokens[d - 1], b.RootPosition + d - 1, d - 2);
                    Extend(ref a, rowA, d);
                    Extend(ref b, sb.LastRow, d);
                    k++;
                }
                else Extend(ref a, a.Session.ExpandToBuffer([ta], [pa], [d - 2]), d);
            }
        }
        foreach (ref var job in jobs)
        {
            var t = job.Tree;
            for (int i = 0; i < job.Nodes; i++) { t._parents[i] = i - 1; t._depths[i] = i; }
            t.Seal(job.Nodes);
        }

        // The chain's step d: the top-1 (the first maximum, as TopK picks it) joins unless the draft has no proposal or
        // the path falls below the confidence floor; the rules of the tensor sessions' chain (ChainInto) and BuildTree's.
        static void Extend(ref ChainJob job, ReadOnlySpan<float> row, int d)
        {
            job.Steps++;
            int best = 0;
            for (int v = 1; v < row.Length; v++) if (row[v] > row[best]) best = v;
            if (float.IsNegativeInfinity(row[best])) { job.Ended = true; return; }   // no proposal here: the chain ends
            job.Score += row[best];
            if (!(job.Score >= job.MinLogProb)) { job.Ended = true; return; }
            job.Tree._tokens[job.Nodes++] = job.DraftToTarget is null ? best : job.DraftToTarget[best];
            if (d >= job.Length) job.Ended = true;
        }
    }

    /// <summary>EAGLE-2's search (see the class summary), any top-k.</summary>
    internal static DraftTree BuildTree(IDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition,
        int totalTokens, int depth, int topK, ref int draftSteps, float minLogProb)
        => new DraftTree().BuildTreeInto(session, draftToTarget, root, rootPosition, totalTokens, depth, topK, ref draftSteps, minLogProb);

    DraftTree BuildTreeInto(IDraftSession session, IReadOnlyList<int>? draftToTarget, int root, int rootPosition,
        int totalTokens, int depth, int topK, ref int draftSteps, float minLogProb)
    {
        var s = _search ??= new TreeSearch();
        var cands = s.Candidates; cands.Clear();
        var frontier = s.Frontier; frontier.Clear();
        int expansions = 0;

        // Depth 1: expand the root.
        s.Tokens[0] = root; s.Positions[0] = rootPosition; s.Parents[0] = -1;
        int k = s.Expand(session, 1, topK, draftToTarget);
        draftSteps++;
        int rootExpansion = expansions++;
        for (int j = 0; j < k; j++)
        {
            // Best first: the rest are lower. A token of probability 0 is never a node, whatever the floor (a draft
            // whose distribution is a point mass, or that has no proposal, gives -inf to the rest).
            float lp = s.TopLogp[j];
            if (!(lp >= minLogProb) || float.IsNegativeInfinity(lp)) break;
            cands.Add(new Candidate(s.TopTokens[j], -1, 1, lp, -1));
            frontier.Add(cands.Count - 1);
        }

        // A round holds at most MaxRoundNodes expanded nodes (the sessions' per-round buffers): with a wide frontier the
        // tree stops growing there instead of failing mid-generation (1 + topK * (depth - 1) nodes would be expanded).
        for (int d = 2; d <= depth && frontier.Count > 0 && expansions + frontier.Count <= DraftModelBase.MaxRoundNodes; d++)
        {
            // Expand the frontier: each node's parent in the session is its parent's expansion (root = rootExpansion).
            int m = frontier.Count;
            s.Reserve(m, topK);
            for (int i = 0; i < m; i++)
            {
                var c = cands[frontier[i]];
                s.Tokens[i] = c.Token; s.Positions[i] = rootPosition + c.Depth;
                s.Parents[i] = c.Parent < 0 ? rootExpansion : cands[c.Parent].Expansion;
                cands[frontier[i]] = c with { Expansion = expansions + i };
            }
            expansions += m;
            k = s.Expand(session, m, topK, draftToTarget);
            draftSteps++;
            // All children of the frontier, scored cumulatively; the best topK become the next frontier.
            int first = cands.Count;
            for (int i = 0; i < m; i++)
            {
                float ps = cands[frontier[i]].Score;
                for (int j = 0; j < k; j++)
                {
                    float lp = s.TopLogp[i * k + j];
                    if (ps + lp >= minLogProb && !float.IsNegativeInfinity(lp)) cands.Add(new Candidate(s.TopTokens[i * k + j], frontier[i], d, ps + lp, -1));
                }
            }
            if (d < depth)
            {
                // The best topK children by score (ties: earlier first), as a stable sort by score would order them.
                var children = s.Order(first, cands.Count - first);
                children.Sort(s.ByScore);
                frontier.Clear();
                foreach (var i in children[..Math.Min(topK, children.Length)]) frontier.Add(i);
            }
        }

        // Rerank every recorded node; keep the best totalTokens-1. Ties prefer shallower (then earlier) nodes, so a
        // kept node's parent is always kept: parent score >= child score, and the parent is shallower and earlier.
        var all = s.Order(0, cands.Count);
        all.Sort(s.ByScoreThenDepth);
        var keep = all[..Math.Min(totalTokens - 1, all.Length)];
        // Breadth-first order: by depth, then by score (so children are listed best first).
        keep.Sort(s.BreadthFirst);
        var node = s.NodeOf(cands.Count);   // candidate -> tree node, -1 = not kept
        int n = keep.Length + 1;
        Reserve(n);
        _tokens[0] = root; _parents[0] = -1; _depths[0] = 0;
        for (int i = 0; i < keep.Length; i++)
        {
            var c = cands[keep[i]];
            node[keep[i]] = i + 1;
            _tokens[i + 1] = c.Token; _depths[i + 1] = c.Depth;
            _parents[i + 1] = c.Parent < 0 ? 0 : node[c.Parent] >= 0 ? node[c.Parent]
                : throw new InvalidOperationException("draft tree is not connected (a kept node's parent was dropped)");
        }
        return Seal(n);
    }

    /// <summary>The search's scratch, kept by its tree from round to round: the candidates, the frontier, one draft step's inputs and top-k.</summary>
    sealed class TreeSearch
    {
        public readonly List<Candidate> Candidates = [];
        public readonly List<int> Frontier = [];
        public int[] Tokens = new int[1], Positions = new int[1], Parents = new int[1];
        public int[] TopTokens = [];     // [m, k] row-major: one draft step's top-k per node
        public float[] TopLogp = [];
        int[] _order = [], _node = [];

        // Orders of candidate indices, made once (a comparison delegate per sort would be an allocation per round).
        // Each is total (the index breaks ties), so the unstable sort gives what a stable one would.
        /// <summary>Score descending, then index.</summary>
        public readonly Comparison<int> ByScore;
        /// <summary>Score descending, then depth, then index.</summary>
        public readonly Comparison<int> ByScoreThenDepth;
        /// <summary>Tree order: depth, then score descending, then index.</summary>
        public readonly Comparison<int> BreadthFirst;

        public TreeSearch()
        {
            var c = Candidates;
            ByScore = (a, b) => { int s = c[b].Score.CompareTo(c[a].Score); return s != 0 ? s : a.CompareTo(b); };
            ByScoreThenDepth = (a, b) =>
            {
                int s = c[b].Score.CompareTo(c[a].Score);
                if (s != 0) return s;
                int d = c[a].Depth.CompareTo(c[b].Depth);
                return d != 0 ? d : a.CompareTo(b);
            };
            BreadthFirst = (a, b) => c[a].Depth != c[b].Depth ? c[a].Depth.CompareTo(c[b].Depth)
                : c[b].Score != c[a].Score ? c[b].Score.CompareTo(c[a].Score) : a.CompareTo(b);
        }

        public void Reserve(int m, int k)
        {
            if (Tokens.Length < m) { Tokens = new int[m]; Positions = new int[m]; Parents = new int[m]; }
            if (TopTokens.Length < m * k) { TopTokens = new int[m * k]; TopLogp = new float[m * k]; }
        }

        /// <summary>The candidate indices [first, first + count), to sort.</summary>
        public Span<int> Order(int first, int count)
        {
            if (_order.Length < count) _order = new int[Math.Max(count, 2 * _order.Length)];
            var o = _order.AsSpan(0, count);
            for (int i = 0; i < count; i++) o[i] = first + i;
            return o;
        }

        /// <summary>A map from candidate to tree node, all -1.</summary>
        public Span<int> NodeOf(int candidates)
        {
            if (_node.Length < candidates) _node = new int[Math.Max(candidates, 2 * _node.Length)];
            var m = _node.AsSpan(0, candidates);
            m.Fill(-1);
            return m;
        }

        /// <summary>One draft forward of the first m nodes of Tokens/Positions/Parents; returns k (top-k per node, in TopTokens/TopLogp).</summary>
        public int Expand(IDraftSession session, int m, int topK, IReadOnlyList<int>? map)
        {
            var tokens = Tokens.AsSpan(0, m); var positions = Positions.AsSpan(0, m); var parents = Parents.AsSpan(0, m);
            if (session.ArrayPath is { } fast)
            {
                var lp = fast.ExpandToBuffer(tokens, positions, parents);   // [m * Vd], the session's buffer
                int vd = fast.VocabSize, kk = Math.Min(topK, vd);
                Reserve(m, kk);
                for (int i = 0; i < m; i++) TopK(lp.Slice(i * vd, vd), kk, map, TopTokens.AsSpan(i * kk, kk), TopLogp.AsSpan(i * kk, kk));
                return kk;
            }
            using var scope = NewDisposeScope();
            var logp = session.Expand(tokens, positions, parents);      // [m, Vd]
            int k = (int)Math.Min(topK, logp.shape[1]);
            var (vals, idx) = logp.topk(k, dim: -1);
            if (vals.device_type != TorchSharp.DeviceType.CPU) { vals = vals.cpu(); idx = idx.cpu(); }   // .cpu() is an op even on the CPU
            var v = vals.data<float>().ToArray();
            var ix = idx.data<long>().ToArray();
            Reserve(m, k);
            for (int i = 0; i < m * k; i++)
            {
                int di = (int)ix[i];
                TopTokens[i] = map is null ? di : map[di];
                TopLogp[i] = v[i];
            }
            return k;
        }
    }

    /// <summary>Top-k of one row by insertion (k is small); ties keep the lower index first, as torch.topk does.</summary>
    static void TopK(ReadOnlySpan<float> row, int k, IReadOnlyList<int>? map, Span<int> tokens, Span<float> values)
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
        for (int j = 0; j < k; j++) { tokens[j] = map is null ? idx[j] : map[idx[j]]; values[j] = val[j]; }
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
        var p = new int[Count];
        PositionsInto(contextLength, p);
        return p;
    }

    /// <summary><see cref="Positions(int)"/> into the first <see cref="Count"/> values of <paramref name="positions"/>.</summary>
    public void PositionsInto(int contextLength, Span<int> positions)
    {
        for (int i = 0; i < Count; i++) positions[i] = contextLength + _depths[i];
    }
}
