using Beagle.Compute;
using Beagle.Drafting.Kernels;
using System.Runtime.CompilerServices;

namespace Beagle.Drafting;

/// <summary>
/// The EAGLE-2 draft session as a plain C# kernel, the twin of <see cref="ManagedBeagleSession"/>, so that the two
/// methods are compared on equal engineering. Same protocol and layout as the tensor session in Eagle2Draft: entry j
/// pairs (t_{j+1}, f_j) at rotary position j; entries [0, n-1) are final after Commit of n positions; the root's entry
/// (t_n, f_{n-1}) and every expanded node's entry live in the round region; a node attends the final entries, itself
/// and its ancestors. A test holds it to the tensor session.
/// </summary>
internal sealed class ManagedEagle2Session : ManagedSessionBase
{
    readonly float[] _wfcT, _bfc, _wqkvT;   // fusion [2D, D] + bias [D]; q | k | q-partner | k-partner | v [D, 2(Q+K) + K]
    readonly float[] _features;      // [capacity, D] committed true features
    readonly float[] _outs;          // [R, D] fhat of this round's nodes
    readonly int[] _tokens;
    int _entries;

    public override bool ConcatDraftStates
    {
        get => true;
        set { if (!value) throw new NotSupportedException("EAGLE-2 drafts always see their ancestors' entries (their input is the parent's draft feature)"); }
    }

    protected override long OwnBytes => ((long)_features.Length + _outs.Length) * sizeof(float) + (long)_tokens.Length * sizeof(int);

    public ManagedEagle2Session(DraftConfig c, int capacity, ManagedEagle2Weights w) : base(c, capacity, w.Common)
    {
        (_wfcT, _bfc, _wqkvT) = (w.WfcT, w.Bfc, w.WqkvT);
        _features = new float[capacity * _d];
        _outs = new float[DraftModelBase.MaxRoundNodes * _d];
        _tokens = new int[capacity];
    }

    /// <summary>
    /// Entry for (token, feature) at rotary position pos: x = fc(e(token) | feature) [D] and rotated q [Q]; writes the
    /// rotated key and the value into slot.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void Entry(int token, ReadOnlySpan<float> feature, int pos, int slot, Span<float> x, Span<float> q)
    {
        Span<float> input = stackalloc float[2 * _d];
        _emb.AsSpan(token * _d, _d).CopyTo(input);
        feature.CopyTo(input[_d..]);
        ManagedMath.MatVec(input, _wfcT, x);
        ManagedMath.Axpy(1f, _bfc, x);
        int qk = _q + _k;
        Span<float> p = stackalloc float[2 * qk + _k];
        ManagedMath.MatVec(x, _wqkvT, p);
        var cos = _cos.AsSpan(pos * _hd, _hd); var sin = _sin.AsSpan(pos * _hd, _hd);
        for (int j = 0; j < _q; j++) q[j] = p[j] * cos[j % _hd] + p[qk + j] * sin[j % _hd];
        Span<float> kd = stackalloc float[_k];
        for (int j = 0; j < _k; j++) kd[j] = p[_q + j] * cos[j % _hd] + p[qk + _q + j] * sin[j % _hd];
        _kv.Write(slot, kd, p.Slice(2 * qk, _k));
    }

    protected override void CommitRows(ReadOnlySpan<int> tokens, ReadOnlySpan<float> hidden)
    {
        int m = tokens.Length;
        hidden.CopyTo(_features.AsSpan(Length * _d, m * _d));
        tokens.CopyTo(_tokens.AsSpan(Length));
        Length += m;
        Span<float> x = stackalloc float[_d];
        Span<float> q = stackalloc float[_q];
        for (int j = _entries; j < Length - 1; j++) Entry(_tokens[j + 1], _features.AsSpan(j * _d, _d), j, j, x, q);
        _entries = Math.Max(_entries, Length - 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override ReadOnlySpan<float> ExpandToBuffer(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
    {
        CheckExpand(tokens, positions, parents, _maxPositions + 1, "Commit the prompt before expanding: the root pairs with the last true feature");
        int N = tokens.Length, e0 = _entries;
        var output = Output(N);
        Span<float> x = stackalloc float[_d];
        Span<float> q = stackalloc float[_q];
        Span<float> o = stackalloc float[_q];
        Span<float> fhat = stackalloc float[_d];
        Span<int> extra = stackalloc int[DraftModelBase.MaxRoundNodes];
        int first = Round.Add(positions, parents);
        for (int i = 0; i < N; i++)
        {
            int node = first + i, pos = positions[i] - 1;   // entry index = token position - 1
            var feature = parents[i] < 0 ? _features.AsSpan((Length - 1) * _d, _d) : _outs.AsSpan(parents[i] * _d, _d);
            Entry(tokens[i], feature, pos, e0 + Round.AssignSlot(node), x, q);
            int ne = 0;
            for (int n = node; n >= 0; n = Round.Parent(n))            // itself and its ancestors
                if (Round.Slot(n) >= 0) extra[ne++] = e0 + Round.Slot(n);
            _kv.Attend(q, e0, extra[..ne], _g, _scale, _scores, o);
            // fhat = a + W2·(silu(gate) * up) over RMSNorm(a), a = x + Wo·o; then the draft's log-probs.
            ManagedMath.OutputAndLogits(o, x, _woT, _w13T, _w2T, _lm, _eps, fhat, output.Slice(i * VocabSize, VocabSize));
            fhat.CopyTo(_outs.AsSpan(node * _d, _d));
        }
        return output;
    }
}
