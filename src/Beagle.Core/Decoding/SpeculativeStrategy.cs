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
    // Per-round scratch, allocated once: the accepted rows' true states for the managed draft [tokens * D].
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
        _acceptedRows = _session.ArrayPath is not null ? new float[(_depth + 1) * target.Config.Dim] : [];   // a path holds at most depth + 1 nodes
    }

    public int Start(ForwardOutput prefill, IReadOnlyList<int> prompt)
    {
        _session.Commit(prompt.ToArray(), prefill.Hidden);   // true states h_0..h_{n-1}
        return LogitsRow.Choose(prefill.Logits, 0, _target.Config.VocabSize, _sampler);
    }

    // The round between Propose and Finish: its tree and the cache length it starts from.
    DraftTree? _tree;
    int _n;

    public SequenceRows? Propose(int pending)
    {
        int n = _cache.Length;
        int room = _cache.Capacity - n;
        if (room <= 0) return null;
        long t0 = Stopwatch.GetTimestamp();

        // 1. Draft: the tree never exceeds the context left.
        int steps = 0;
        var tree = DraftTree.Build(_session, _draft.DraftToTarget, pending, n, Math.Min(_tokens, room), Math.Min(_depth, room - 1), _topK, ref steps, _minLogProb);
        _session.EndRound();
        _stats.DraftSteps += steps;
        _stats.DraftSeconds += Stopwatch.GetElapsedTime(t0).TotalSeconds;
        (_tree, _n) = (tree, n);
        // 2. The whole tree is verified in one target forward (a chain's tree mask is the causal one).
        return new SequenceRows(_cache, tree.Tokens, tree.Positions(n), tree.IsChain ? null : tree.Parents);
    }

    public int[] Finish(ForwardOutput o, int row)
    {
        var tree = _tree ?? throw new InvalidOperationException("Finish without a proposal");
        int n = _n;
        _tree = null;
        long t1 = Stopwatch.GetTimestamp();
        List<int> path; int bonus;
        int[] pathTokens;
        _stats.TargetForwards++;
        // 4. Accept, reading the logits in place (no tensor ops: each costs microseconds at this size).
        int vocab = _target.Config.VocabSize;   // (not o.Logits.shape: ~1 µs per read)
        using (var logits = HostFloats.Of(o.Logits))
        {
            var lg = logits.Span.Slice(row * vocab, tree.Count * vocab);
            if (_sampler.Options.IsGreedy)
            {
                Span<long> argmax = stackalloc long[tree.Count];   // at most MaxRoundNodes + 1
                for (int i = 0; i < argmax.Length; i++) argmax[i] = Sampler.ArgMax(lg.Slice(i * vocab, vocab));
                (path, bonus) = Verifier.AcceptGreedy(tree, argmax);
            }
            else
            {
                var rows = logits;   // the lambda below cannot capture the span itself
                (path, bonus) = Verifier.AcceptSampling(tree, i => _sampler.Probabilities(rows.Span.Slice((row + i) * vocab, vocab)), _sampler, _mutation);
            }
        }

        // 5. Commit: keep the accepted path's KV entries in place; give the draft their true states.
        Span<long> slots = stackalloc long[path.Count];
        pathTokens = new int[path.Count];
        for (int r = 0; r < path.Count; r++) { slots[r] = n + path[r]; pathTokens[r] = tree.Tokens[path[r]]; }
        _cache.KeepSlots(n, slots);
        if (_session.ArrayPath is { } managed)
        {
            // The managed kernel takes the accepted rows straight from the forward's hidden states.
            int d = _target.Config.Dim;
            using var hidden = HostFloats.Of(o.Hidden);
            var rows = _acceptedRows.AsSpan(0, path.Count * d);
            for (int r = 0; r < path.Count; r++) hidden.Span.Slice((row + path[r]) * d, d).CopyTo(rows.Slice(r * d, d));
            managed.Commit(pathTokens, rows);
        }
        else
        {
            using var scope = NewDisposeScope();
            var pathIdx = path.Select(i => (long)(row + i)).ToArray();
            var hidden = o.Hidden.index_select(0, tensor(pathIdx, device: _target.Device));   // [len, D]
            _session.Commit(pathTokens, hidden);
        }
        _stats.VerifySeconds += Stopwatch.GetElapsedTime(t1).TotalSeconds;

        if (tree.Count > 1)
        {
            _stats.DraftRounds++;
            for (int d = 1; d < path.Count; d++) _stats.AcceptedAtDepth[d - 1]++;
        }
        var emitted = new int[path.Count];
        for (int i = 1; i < path.Count; i++) emitted[i - 1] = tree.Tokens[path[i]];
        emitted[^1] = bonus;
        return emitted;
    }

    public void Dispose() => _session.Dispose();
}
