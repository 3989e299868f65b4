using System.Diagnostics;
using Beagle.Drafting;
using Beagle.Models;
using static TorchSharp.torch;

namespace Beagle.Decoding;

/// <summary>
/// Speculative decoding, one round per <see cref="Propose"/> and <see cref="Finish"/> (architecture.md, "One speculative
/// round"): draft a tree from the pending token; the generator verifies it in one target forward with the tree mask
/// (with other sequences' rows when batched); accept a path, keep the accepted KV entries in place, commit their true
/// states to the draft, emit path + bonus token.
/// </summary>
internal sealed class SpeculativeStrategy : IDecodeStrategy
{
    readonly LlamaModel _target;
    readonly IDraftModel _draft;
    readonly IDraftSession _session;
    readonly KvCache _cache;
    readonly Sampler _sampler;
    readonly GenerationStats _stats;
    readonly int _tokens, _depth, _topK;
    readonly float _minLogProb;
    readonly AcceptanceMutation _mutation;
    // Per-round buffers, allocated once and reused every round (a round allocates nothing once drafting's scratch has
    // grown): the tree (rebuilt by each Propose), its rows' positions, the accepted path, its tokens, the emitted
    // tokens (what Finish returns) and the accepted rows' true states for the managed draft [(depth + 1) * D].
    readonly DraftTree _tree = new();
    readonly int[] _positions, _path, _pathTokens, _emitted;
    readonly float[] _acceptedRows;

    public SpeculativeStrategy(LlamaModel target, IDraftModel draft, KvCache cache, Sampler sampler, GenerationStats stats, TreeBudget budget, bool concat,
        AcceptanceMutation mutation = AcceptanceMutation.None)
    {
        _mutation = mutation;
        (_target, _draft, _cache, _sampler, _stats) = (target, draft, cache, sampler, stats);
        (_tokens, _depth, _topK) = (budget.Tokens, budget.Depth, budget.TopK);
        _minLogProb = budget.MinProb > 0 ? MathF.Log((float)budget.MinProb) : float.NegativeInfinity;
        _session = draft.StartSession(cache.Capacity);
        _session.ConcatDraftStates = concat;
        stats.AcceptedAtDepth = new long[_depth];
        stats.DraftStateBytes = _session.StateBytes;
        int nodes = Math.Max(_tokens, 1);   // a round's tree never has more nodes than the budget's tokens (the root included)
        (_positions, _path, _pathTokens, _emitted) = (new int[nodes], new int[nodes], new int[nodes], new int[nodes]);
        _acceptedRows = _session.ArrayPath is not null ? new float[(_depth + 1) * target.Config.Dim] : [];   // a path holds at most depth + 1 nodes
    }

    public int Start(ForwardOutput prefill, IReadOnlyList<int> prompt)
    {
        _session.Commit(prompt.ToArray(), prefill.Hidden);   // true states h_0..h_{n-1}
        return LogitsRow.Choose(prefill, 0, _target.Config.VocabSize, _sampler);
    }

    // The round between Propose and Finish: whether one is open and the cache length it starts from.
    bool _proposed;
    int _n;

    public SequenceRows? Propose(int pending)
    {
        int n = _cache.Length;
        if (_cache.Capacity - n <= 0) return null;
        long t0 = Stopwatch.GetTimestamp();

        // 1. Draft: the tree never exceeds the context left.
        int steps = 0;
        var (tokens, depth) = RoundBudget(n);
        _tree.Rebuild(_session, _draft.DraftToTarget, pending, n, tokens, depth, _topK, ref steps, _minLogProb);
        return EndProposal(steps, Stopwatch.GetElapsedTime(t0).TotalSeconds);
    }

    /// <summary>This round's tree budget: the tokens and depth asked for, cut to the context left after <paramref name="n"/> positions.</summary>
    (int Tokens, int Depth) RoundBudget(int n)
    {
        int room = _cache.Capacity - n;
        return (Math.Min(_tokens, room), Math.Min(_depth, room - 1));
    }

    /// <summary>
    /// The first half of <see cref="Propose"/> for a round whose draft is a chain over a session that can draft in
    /// lockstep with other sequences' (<see cref="DraftTree.BuildChains"/>): sets up the chain as Propose would build
    /// it. False when this round drafts otherwise (a tree, a session that cannot pair, no room: use Propose).
    /// </summary>
    internal bool TryBeginChain(int pending, out DraftTree.ChainJob job)
    {
        job = default;
        int n = _cache.Length;
        var (tokens, depth) = RoundBudget(n);
        if (_topK != 1 || tokens <= 1 || depth < 1 || _session.ArrayPath is not IPairedDraftSession paired) return false;   // (others draft alone, in Propose)
        job = new DraftTree.ChainJob(_tree, paired, _draft.DraftToTarget, pending, n, Math.Min(tokens - 1, depth), _minLogProb);
        return true;
    }

    /// <summary>
    /// The second half of <see cref="Propose"/> after <see cref="DraftTree.BuildChains"/> built the job's chain:
    /// <paramref name="draftSeconds"/> is the lockstep drafting's time (shared, as a batched forward's is).
    /// </summary>
    internal SequenceRows EndChain(in DraftTree.ChainJob job, double draftSeconds) => EndProposal(job.Steps, draftSeconds);

    /// <summary>A proposal once its tree is built: ends the draft's round, counts it, and hands the tree's rows out.</summary>
    SequenceRows EndProposal(int draftSteps, double draftSeconds)
    {
        int n = _cache.Length;
        _session.EndRound();
        _stats.DraftSteps += draftSteps;
        _stats.DraftSeconds += draftSeconds;
        (_proposed, _n) = (true, n);
        // 2. The whole tree is verified in one target forward (a chain's tree mask is the causal one). The rows view
        // the tree's and this strategy's buffers, untouched until Finish.
        var tree = _tree;
        tree.PositionsInto(n, _positions);
        return new SequenceRows(_cache, tree.TokenBuffer, _positions, tree.IsChain ? null : tree.ParentBuffer, tree.Count);
    }

    public ReadOnlySpan<int> Finish(ForwardOutput o, int row)
    {
        if (!_proposed) throw new InvalidOperationException("Finish without a proposal");
        var tree = _tree;
        int n = _n;
        _proposed = false;
        long t1 = Stopwatch.GetTimestamp();
        int bonus;
        _stats.TargetForwards++;
        // 4. Accept, reading the logits in place (no tensor ops: each costs microseconds at this size).
        int vocab = _target.Config.VocabSize;   // (not o.Logits.shape: ~1 µs per read)
        int accepted;   // the path's length (root included)
        var lg = o.HostLogits.Slice(row * vocab, tree.Count * vocab);
        if (_sampler.Options.IsGreedy)
        {
            Span<long> argmax = stackalloc long[tree.Count];   // at most the budget's tokens
            for (int i = 0; i < argmax.Length; i++) argmax[i] = Sampler.ArgMax(lg.Slice(i * vocab, vocab));
            accepted = Verifier.AcceptGreedy(tree, argmax, _path, out bonus);
        }
        else accepted = AcceptSampling(o, row, vocab, out bonus);
        var path = _path.AsSpan(0, accepted);

        // 5. Commit: keep the accepted path's KV entries in place; give the draft their true states.
        Span<long> slots = stackalloc long[accepted];
        var pathTokens = _pathTokens.AsSpan(0, accepted);
        for (int r = 0; r < accepted; r++) { slots[r] = n + path[r]; pathTokens[r] = tree.Tokens[path[r]]; }
        _cache.KeepSlots(n, slots);
        if (_session.ArrayPath is { } managed)
        {
            // The managed kernel takes the accepted rows straight from the forward's hidden states.
            int d = _target.Config.Dim;
            var hidden = o.HostHidden;
            var rows = _acceptedRows.AsSpan(0, accepted * d);
            for (int r = 0; r < accepted; r++) hidden.Slice((row + path[r]) * d, d).CopyTo(rows.Slice(r * d, d));
            managed.Commit(pathTokens, rows);
        }
        else
        {
            using var scope = NewDisposeScope();
            var pathIdx = new long[accepted];
            for (int r = 0; r < accepted; r++) pathIdx[r] = row + path[r];
            var hidden = o.Hidden.index_select(0, tensor(pathIdx, device: _target.Device));   // [len, D]
            _session.Commit(pathTokens, hidden);
        }
        _stats.VerifySeconds += Stopwatch.GetElapsedTime(t1).TotalSeconds;

        if (tree.Count > 1)
        {
            _stats.DraftRounds++;
            for (int d = 1; d < accepted; d++) _stats.AcceptedAtDepth[d - 1]++;
        }
        // The emitted tokens: the accepted path after the root, then the bonus token. (Valid until the next Propose.)
        var emitted = _emitted.AsSpan(0, accepted);
        for (int i = 1; i < accepted; i++) emitted[i - 1] = tree.Tokens[path[i]];
        emitted[^1] = bonus;
        return emitted;
    }

    /// <summary>The sampling acceptance over the tree's rows of the forward's logits (from <paramref name="row"/>).</summary>
    int AcceptSampling(ForwardOutput o, int row, int vocab, out int bonus)
        => Verifier.AcceptSampling(_tree, new TreeRows(o, row, vocab, _sampler), _sampler, _mutation, _path, out bonus);

    /// <summary>Node i's distribution: the sampler's, of logits row <c>row + i</c>, in the sampler's buffer.</summary>
    readonly struct TreeRows(ForwardOutput output, int row, int vocab, Sampler sampler) : INodeDistributions
    {
        public Span<float> After(int node) => sampler.Distribution(output.HostLogits.Slice((row + node) * vocab, vocab));
    }

    public void Dispose() => _session.Dispose();
}
