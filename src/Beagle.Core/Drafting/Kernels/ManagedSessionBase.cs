using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Beagle.Drafting.Kernels;

/// <summary>
/// What the managed draft sessions share: the protocol plumbing around their kernels. Commit takes true states as a
/// tensor (any device/dtype: copied to the CPU once) or as a plain array (no tensor op: the speculative strategy reads
/// the verifying forward's hidden rows in place); Expand wraps the array result in a tensor for callers that want one.
/// </summary>
internal abstract class ManagedSessionBase : IDraftSession, IArrayDraftSession
{

    // Sizes from the draft config: dim, kv-heads, head dim, group size, q dim, kv dim.
    protected readonly int _d, _kvh, _hd, _g, _q, _k, _maxPositions;
    protected readonly float _eps, _scale;
    // Weights both architectures share (see the sessions for their own): the target embedding [V, D], the block tail
    // (Wo [Q, D], gate|up [D, 2F], down [F, D]), LM-head rows [Vd, D] and the rotary tables [maxPos, hd].
    protected readonly float[] _emb, _woT, _w13T, _w2T, _lm, _cos, _sin;
    /// <summary>capacity + R slots: committed entries, then this round's.</summary>
    protected readonly HeadMajorKv _kv;
    /// <summary>Attention scratch for HeadMajorKv.Attend: two heads' rows over every slot.</summary>
    protected readonly float[] _scores;
    readonly int _capacity, _vd;
    float[] _output = [];   // ExpandToBuffer's result, grown to the widest round seen

    protected ManagedSessionBase(DraftConfig c, int capacity, ManagedWeights w)
    {
        if (capacity <= 0 || capacity > c.MaxPositions)
            throw new ArgumentOutOfRangeException(nameof(capacity), $"capacity must be in [1, {c.MaxPositions}], got {capacity}");
        (_d, _kvh, _hd, _g, _q, _k) = (c.Dim, c.KvHeads, c.HeadDim, c.GroupSize, c.QDim, c.KvDim);
        (_capacity, _maxPositions, _vd) = (capacity, c.MaxPositions, w.LmRows);
        _eps = (float)c.NormEps; _scale = 1f / MathF.Sqrt(_hd);
        (_emb, _woT, _w13T, _w2T, _lm, _cos, _sin) = (w.Emb, w.WoT, w.W13T, w.W2T, w.Lm, w.Cos, w.Sin);   // shared, read-only
        _kv = new HeadMajorKv(_kvh, _hd, capacity + DraftModelBase.MaxRoundNodes);
        _scores = new float[2 * (capacity + DraftModelBase.MaxRoundNodes)];
    }

    /// <summary>The output buffer for <paramref name="nodes"/> nodes' log-probs (reused: allocated once per width).</summary>
    protected Span<float> Output(int nodes)
    {
        int n = nodes * _vd;
        if (_output.Length < n) _output = new float[n];
        return _output.AsSpan(0, n);
    }

    /// <summary>This round's expanded nodes and their draft-state slots.</summary>
    protected RoundTree Round { get; } = new(DraftModelBase.MaxRoundNodes);

    public int Length { get; protected set; }
    public int VocabSize => _vd;

    /// <summary>The key/value slots, the round's bookkeeping and the architecture's own buffers (<see cref="OwnBytes"/>).</summary>
    public long StateBytes => _kv.Bytes + Round.Bytes + OwnBytes;

    /// <summary>Bytes of the buffers a subclass allocates for itself (draft states, committed features).</summary>
    protected abstract long OwnBytes { get; }
    public abstract bool ConcatDraftStates { get; set; }

    /// <summary>Appends m accepted positions: tokens [m] and their true states hidden [m * Dim] (validated).</summary>
    protected abstract void CommitRows(ReadOnlySpan<int> tokens, ReadOnlySpan<float> hidden);

    public abstract ReadOnlySpan<float> ExpandToBuffer(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents);

    /// <summary>
    /// The protocol checks of an Expand call: something committed, parents and positions valid for the round, roots at
    /// the pending position, tokens inside the vocabulary. <paramref name="emptyMessage"/> says why a commit is needed.
    /// </summary>
    protected void CheckExpand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents, int maxPositions, string emptyMessage)
    {
        if (Length == 0) throw new InvalidOperationException(emptyMessage);
        Round.Validate(tokens, positions, parents, maxPositions);
        int vocab = _emb.Length / _d;
        for (int i = 0; i < tokens.Length; i++)
        {
            if (parents[i] < 0 && positions[i] != Length) throw new ArgumentException($"a root must be the pending token at position {Length}, got {positions[i]}", nameof(positions));
            if ((uint)tokens[i] >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} is outside the vocabulary (size {vocab})");
        }
    }

    public void Commit(ReadOnlySpan<int> tokens, Tensor hidden)
    {
        if (tokens.Length == 0) return;
        DraftModelBase.CheckCommit(Round.Count, hidden, tokens.Length, _d, Length, _capacity);
        // In a dispose scope: a temporary of the chain (the detached alias) is otherwise unreferenced while the next
        // native call runs, and a garbage collection then could finalise, and free, it mid-call (a test run crashed so).
        using var scope = NewDisposeScope();
        var h = hidden.detach().to(float32).cpu().contiguous();
        CommitRows(tokens, MemoryMarshal.Cast<byte, float>(h.bytes));
    }

    public void Commit(ReadOnlySpan<int> tokens, ReadOnlySpan<float> hidden)
    {
        if (tokens.Length == 0) return;
        DraftModelBase.CheckCommit(Round.Count, hidden.Length, tokens.Length, _d, Length, _capacity);
        CommitRows(tokens, hidden);
    }

    public Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
        => tensor(ExpandToBuffer(tokens, positions, parents).ToArray(), [tokens.Length, _vd]);   // the tensor owns a copy

    public void EndRound() => Round.Clear();

    public void Dispose() { }
}
