using Beagle.Compute;
using Beagle.Drafting.Kernels;
using System.Runtime.CompilerServices;

namespace Beagle.Drafting;

/// <summary>
/// The Beagle draft session as a plain C# kernel (SIMD float math, no tensor ops) for small drafts on the CPU.
///
/// Why: at stories260K's size every TorchSharp op costs ~3 µs of overhead regardless of its size, and one draft step
/// needs ~50 of them — a third of a whole target forward, which eats most of what speculation saves (docs/benchmarks.md).
/// The same math in C# over a few hundred kilo-FLOPs costs tens of microseconds. The weights are the session snapshot
/// of <see cref="BeagleDraft"/> (norms folded, rotary partners fused), so both kernels compute the same function;
/// a test holds them to 1e-4 on log-probabilities. Large drafts (or a GPU) keep the tensor session, where the op
/// overhead is small next to the FLOPs.
/// </summary>
internal sealed class ManagedBeagleSession : ManagedSessionBase, IPairedDraftSession
{
    readonly float[] _qTable;   // [V, 2Q]: q | q-partner of every token (RMSNorm(e(t)) · WqT)
    readonly float[] _wkvT;     // [D, 3K]: k | k-partner | v
    readonly float[] _states;   // [R, D] hhat of this round's nodes

    public override bool ConcatDraftStates { get; set; } = true;

    protected override long OwnBytes => (long)_states.Length * sizeof(float);

    public ManagedBeagleSession(DraftConfig c, int capacity, ManagedBeagleWeights w) : base(c, capacity, w.Common)
    {
        (_qTable, _wkvT) = (w.QTable, w.WkvT);
        _states = new float[DraftModelBase.MaxRoundNodes * _d];
    }

    /// <summary>Writes rotated key and value of state x (length D) at position pos into slot.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void ProjectKv(ReadOnlySpan<float> x, int pos, int slot)
    {
        Span<float> xn = stackalloc float[_d];
        Span<float> p = stackalloc float[3 * _k];
        ManagedMath.RmsNorm(x, xn, _eps);
        ManagedMath.MatVec(xn, _wkvT, p);
        Span<float> k = stackalloc float[_k];
        var cos = _cos.AsSpan(pos * _hd, _hd); var sin = _sin.AsSpan(pos * _hd, _hd);
        for (int i = 0; i < _k; i++) k[i] = p[i] * cos[i % _hd] + p[_k + i] * sin[i % _hd];
        _kv.Write(slot, k, p.Slice(2 * _k, _k));
    }

    protected override void CommitRows(ReadOnlySpan<int> tokens, ReadOnlySpan<float> h)
    {
        for (int r = 0; r < tokens.Length; r++) ProjectKv(h.Slice(r * _d, _d), Length + r, Length + r);   // slot = position
        Length += tokens.Length;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override ReadOnlySpan<float> ExpandToBuffer(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
    {
        int first = AddNodes(tokens, positions, parents);
        var output = Output(tokens.Length);
        Span<float> o = stackalloc float[_q];
        for (int i = 0; i < tokens.Length; i++)
        {
            Attend(tokens[i], positions[i], parents[i], o);
            // hhat = y + W2·(silu(gate) * up) over RMSNorm(y), y = e(t) + Wo·o; then the draft's log-probs.
            ManagedMath.OutputAndLogits(o, _emb.AsSpan(tokens[i] * _d, _d), _woT, _w13T, _w2T, _lm, _eps,
                _states.AsSpan((first + i) * _d, _d), output.Slice(i * VocabSize, VocabSize));
        }
        return output;
    }

    public bool CanPairWith(IPairedDraftSession other) => other is ManagedBeagleSession b && ReferenceEquals(b._woT, _woT) && b.ConcatDraftStates == ConcatDraftStates;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public ReadOnlySpan<float> ExpandPair(int token, int position, int parent, IPairedDraftSession other, int otherToken, int otherPosition, int otherParent)
    {
        if (!CanPairWith(other)) throw new ArgumentException("only sessions of the same draft expand together", nameof(other));
        var b = (ManagedBeagleSession)other;
        if (ReferenceEquals(b, this)) throw new ArgumentException("a session cannot expand together with itself", nameof(other));
        int fa = AddNodes([token], [position], [parent]), fb = b.AddNodes([otherToken], [otherPosition], [otherParent]);
        Span<float> oa = stackalloc float[_q], ob = stackalloc float[_q];
        Attend(token, position, parent, oa);
        b.Attend(otherToken, otherPosition, otherParent, ob);
        var rowA = Output(1); var rowB = b.Output(1);
        ManagedMath.OutputAndLogitsPair(oa, ob, _emb.AsSpan(token * _d, _d), _emb.AsSpan(otherToken * _d, _d), _woT, _w13T, _w2T, _lm, _eps,
            _states.AsSpan(fa * _d, _d), b._states.AsSpan(fb * _d, _d), rowA, rowB);
        return rowA;
    }

    public ReadOnlySpan<float> LastRow => Output(1);

    /// <summary>
    /// Checks an expansion and adds its nodes to the round (giving the parents that deeper nodes now need a K/V slot
    /// theirs: their own ancestors already have one); returns the first new node's id.
    /// </summary>
    int AddNodes(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
    {
        CheckExpand(tokens, positions, parents, _maxPositions, "Commit the prompt before expanding: the root needs at least one true state");
        if (ConcatDraftStates)
            for (int i = 0; i < tokens.Length; i++)
            {
                int p = parents[i];
                if (p >= 0 && Round.Slot(p) < 0)
                    ProjectKv(_states.AsSpan(p * _d, _d), Round.Position(p), Length + Round.AssignSlot(p));
            }
        return Round.Add(positions, parents);
    }

    /// <summary>The attention output o [Q] of a node (already added): its token's query over the committed keys and its ancestors' draft states.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void Attend(int token, int position, int parent, Span<float> o)
    {
        Span<float> q = stackalloc float[_q];
        Span<int> extra = stackalloc int[DraftModelBase.MaxRoundNodes];
        int n0 = Length;
        // Query: the precomputed projection of the token, rotated to its position.
        var qt = _qTable.AsSpan(token * 2 * _q, 2 * _q);
        var cos = _cos.AsSpan(position * _hd, _hd); var sin = _sin.AsSpan(position * _hd, _hd);
        for (int j = 0; j < _q; j++) q[j] = qt[j] * cos[j % _hd] + qt[_q + j] * sin[j % _hd];
        // Visible keys: every committed true state (slots [0, n0)), plus the draft states of this node's ancestors.
        int ne = 0;
        if (ConcatDraftStates)
            for (int a = parent; a >= 0; a = Round.Parent(a))
                if (Round.Slot(a) >= 0) extra[ne++] = n0 + Round.Slot(a);
        _kv.Attend(q, n0, extra[..ne], _g, _scale, _scores, o);
    }
}
