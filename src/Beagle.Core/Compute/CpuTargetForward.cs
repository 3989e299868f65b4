using Beagle.Models;
using static TorchSharp.torch;

namespace Beagle.Compute;

/// <summary>
/// The target forward on the CPU. A forward of a few tokens (decoding, verification: at most
/// <see cref="ManagedAttention.MaxTokens"/> per sequence) is C# from start to end over pooled arrays
/// (<see cref="ForwardManaged"/>): products over weights packed once at load (<see cref="PackedMatrix"/>: faster than
/// libtorch's at every row count measured, one thread), RMSNorm, rotary, attention (<see cref="ManagedAttention"/>),
/// SwiGLU, the embedding lookup, and its outputs are pooled host arrays too (<see cref="ForwardOutput"/>). Without
/// per-op and per-tensor costs a stories260K step went from ~270 to ~42 µs (docs/benchmarks.md). Long prefills and
/// training features keep libtorch's attention (<see cref="TensorTargetForward"/>) with the same C# products, norms
/// and SwiGLU over tensors.
/// The q | k | v product has no rotary partner rows here: they would be 75 % more qkv weights to stream per token
/// (12 % of a stories5M step), and the rotation reads the partners from q and k instead.
/// </summary>
internal sealed class CpuTargetForward : TensorTargetForward
{
    /// <summary>One layer's folded weights (see <see cref="TensorTargetForward.Fold"/>), packed; the qkv bias [Q+2K] or null.</summary>
    sealed record Layer(PackedMatrix Qkv, PackedMatrix Wo, PackedMatrix W13, PackedMatrix W2, float[]? QkvBias);

    readonly Layer[] _layers;
    readonly float[] _cosHost, _sinHost;   // [maxPos, hd]: the rotary tables for the C# rotation
    readonly int[] _pair;                  // [hd]: each head dimension's rotary partner
    readonly Tensor _pairIdx;              // the same as a tensor (the tensor path gathers the partners)
    readonly Tensor _lmHeadWeight;         // [V, D], the model's (training logits)

    /// <summary>The LM head packed for the C# products ([D, V]); drafts with the full vocabulary share it.</summary>
    public PackedMatrix LmHead { get; }

    /// <summary>Rotary and attention of short forwards in C# (<see cref="ManagedAttention"/>); off = libtorch's ops (tests compare the two).</summary>
    public bool UseManagedAttention { get; set; } = true;

    public CpuTargetForward(LlamaModel model, LlamaWeights w) : base(model)
    {
        _cosHost = Rope.Cos.data<float>().ToArray(); _sinHost = Rope.SinSigned.data<float>().ToArray();
        _pair = Array.ConvertAll(Rope.Pair, p => (int)p);
        _pairIdx = tensor(Rope.Pair).DetachFromDisposeScope();
        _lmHeadWeight = model.LmHeadWeight;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        LmHead = PackedMatrix.FromTensor(model.LmHeadWeight.t());
        _layers = new Layer[Config.Layers];
        for (int l = 0; l < _layers.Length; l++)
        {
            var (wqkvT, b, woT, w13T, w2T) = Fold(w.Layers[l], l, partners: false);
            _layers[l] = new Layer(PackedMatrix.FromTensor(wqkvT), PackedMatrix.FromTensor(woT), PackedMatrix.FromTensor(w13T),
                PackedMatrix.FromTensor(w2T), b?.to(float32).data<float>().ToArray());
        }
    }

    public override ForwardOutput Forward(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, bool[]? allowed, bool lastLogitsOnly)
    {
        int T = tokens.Length;
        if (!UseManagedAttention || T > ManagedAttention.MaxTokens) return base.Forward(cache, tokens, positions, allowed, lastLogitsOnly);
        int start = cache.Length;
        var masked = allowed is not null ? new MaskedSlots(allowed, T, start + T) : WindowMask(T, start);
        cache.Advance(T);
        return ForwardManaged([new Segment(cache, 0, T, start, masked)], tokens, positions, lastLogitsOnly);
    }

    /// <summary>
    /// The batch bookkeeping of <see cref="ForwardBatch"/>, reused from forward to forward so that a decoding round
    /// allocates nothing here. Per thread: a model (and this forward) may serve generators on several threads at once.
    /// </summary>
    sealed class BatchScratch
    {
        public int[] Tokens = [], Positions = [];
        public Segment[] Segments = [];
        public readonly List<MaskedSlots> Masks = [];   // one per tree sequence of the batch, refilled each forward

        public MaskedSlots Mask(int i) { while (Masks.Count <= i) Masks.Add(new MaskedSlots()); return Masks[i]; }
        public static void Grow<T>(ref T[] a, int n) { if (a.Length < n) a = new T[Math.Max(n, 2 * a.Length)]; }
    }
    [ThreadStatic] static BatchScratch? t_scratch;

    /// <summary>
    /// On the CPU the products run over all sequences' rows stacked (a pass over the weights serves every sequence: a
    /// memory-bound step costs little more for several sequences than for one), attention runs per sequence over its
    /// own cache. Each row's results are bit-identical to running its sequence alone (the packed kernels sum every
    /// output in one order whatever the row count; BatchInvarianceTests), which is what makes batched greedy decoding
    /// give exactly the output of decoding alone. Sequences with more rows than the C# attention takes run one tensor
    /// forward each (same results, no shared weight pass).
    /// </summary>
    public override ForwardOutput ForwardBatch(IReadOnlyList<SequenceRows> sequences)
    {
        int B = sequences.Count, total = 0;
        bool managed = UseManagedAttention;
        for (int b = 0; b < B; b++) { int T = sequences[b].Tokens.Length; if (T > ManagedAttention.MaxTokens) managed = false; total += T; }
        if (!managed) return base.ForwardBatch(sequences);
        var scratch = t_scratch ??= new BatchScratch();
        BatchScratch.Grow(ref scratch.Tokens, total); BatchScratch.Grow(ref scratch.Positions, total); BatchScratch.Grow(ref scratch.Segments, B);
        var segments = scratch.Segments.AsSpan(0, B);
        for (int b = 0, row = 0, trees = 0; b < B; b++)
        {
            var sq = sequences[b];
            int T = sq.Tokens.Length, start = sq.Cache.Length;
            sq.Tokens.CopyTo(scratch.Tokens.AsSpan(row)); sq.Positions.CopyTo(scratch.Positions.AsSpan(row));
            var masked = sq.IsTree ? scratch.Mask(trees++).FillTree(sq.TreeParents, start) : WindowMask(T, start);
            segments[b] = new Segment(sq.Cache, row, T, sq.Cache.Advance(T), masked);
            row += T;
        }
        return ForwardManaged(segments, scratch.Tokens.AsSpan(0, total), scratch.Positions.AsSpan(0, total), lastLogitsOnly: false);
    }

    /// <summary>One sequence's rows in a managed forward: rows [Row, Row + Count) of the batch, written at cache slots [Start, Start + Count).</summary>
    readonly record struct Segment(KvCache Cache, int Row, int Count, int Start, MaskedSlots? Masked);

    /// <summary>The hidden slots of T causal rows from <paramref name="start"/> when a sliding window hides any; else null (plain causal).</summary>
    MaskedSlots? WindowMask(int T, int start) =>
        Config.SlidingWindow is { } w && start + T > w ? new MaskedSlots(CausalAllowed(T, start), T, start + T) : null;

    /// <summary>
    /// The forward of a few new tokens per sequence, start to end in C#: the intermediates live in arrays rented from the
    /// forward's pool (<see cref="HostPool"/>). Through tensors every intermediate was a libtorch allocation
    /// plus TorchSharp's bookkeeping, ~40 per stories260K forward and ~25 % of a one-token step (`perf`,
    /// docs/benchmarks.md). The arithmetic is the tensor path's, kernel for kernel (products <see cref="PackedMatrix"/>,
    /// attention <see cref="ManagedAttention"/>), so results are bit-identical to it. The cache slots are already reserved.
    /// The outputs are host arrays from the pool too (<see cref="ForwardBuffers"/>), so a decoding round allocates no
    /// managed object here; tensors of them are made only for a caller that asks.
    /// </summary>
    ForwardOutput ForwardManaged(ReadOnlySpan<Segment> segments, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, bool lastLogitsOnly)
    {
        int T = tokens.Length, d = Config.Dim, hff = Config.HiddenDim, S = 0;
        foreach (var sg in segments) S = Math.Max(S, sg.Start + sg.Count);
        int qkvWidth = Q + 2 * Kv;                                                            // q | k | v
        var pool = HostPool.Floats;
        float[] x = pool.Rent(T * d), h = pool.Rent(T * d), qkv = pool.Rent(T * qkvWidth), rot = pool.Rent(T * (H + KvH) * Hd),
            attn = pool.Rent(T * Q), gu = pool.Rent(T * 2 * hff), act = pool.Rent(T * hff), scores = pool.Rent(2 * S);
        try
        {
            EmbedRows(tokens, x);                                                              // [T, D]
            for (int l = 0; l < _layers.Length; l++)
            {
                var layer = _layers[l];
                NormRows(x, h, T);                                                             // h = RMSNorm(x) (weight folded)
                if (layer.QkvBias is { } bias)
                {
                    for (int i = 0; i < T; i++) bias.CopyTo(qkv, i * qkvWidth);
                    layer.Qkv.Multiply(h, T, qkv, qkv);                                        // [T, Q+2K] = bias + h·Wqkv
                }
                else layer.Qkv.Multiply(h, T, qkv, null);
                Rotate(qkv, T, positions, rot);
                foreach (var sg in segments)                                                   // attn: [T, Q]
                    ManagedAttention.Run(rot.AsSpan(sg.Row * (H + KvH) * Hd), qkv.AsSpan(sg.Row * qkvWidth), qkvWidth, Q + Kv,
                        Floats(sg.Cache.K[l]), Floats(sg.Cache.V[l]), sg.Cache.Capacity, H, KvH, Hd, sg.Start, sg.Count, sg.Masked,
                        attn.AsSpan(sg.Row * Q), scores);
                layer.Wo.Multiply(attn, T, x, x);                                             // x += attn·Wo
                NormRows(x, h, T);
                layer.W13.Multiply(h, T, gu, null);                                            // [T, 2*Hff]: gate | up
                SwiGluRows(gu, act, T);
                layer.W2.Multiply(act, T, x, x);                                               // x += act·W2
            }
            var output = ForwardBuffers.RentHost(lastLogitsOnly ? 1 : T, Config.VocabSize, T, d);
            try
            {
                var hidden = output.HiddenArray;                                               // [T, D]: final RMSNorm
                NormRows(x, hidden, T, Floats(FinalNorm));
                if (lastLogitsOnly) { hidden.AsSpan((T - 1) * d, d).CopyTo(x); LmHead.Multiply(x, 1, output.LogitsArray, null); }   // [1, V]
                else LmHead.Multiply(hidden, T, output.LogitsArray, null);                    // [T, V]
                return new ForwardOutput(output);
            }
            catch { output.Release(); throw; }
        }
        finally
        {
            pool.Return(x); pool.Return(h); pool.Return(qkv); pool.Return(rot); pool.Return(attn); pool.Return(gu); pool.Return(act); pool.Return(scores);
        }
    }

    /// <summary>
    /// Rotary in C#: rot[t] = (q | k) · cos[pos] + (q | k)[partner] · sinSigned[pos], read from the fused projection
    /// qkv [T, Q + 2K] (q | k | v); rot is [T, H + kvH, hd], the layout ManagedAttention reads.
    /// </summary>
    void Rotate(ReadOnlySpan<float> qkv, int T, ReadOnlySpan<int> positions, Span<float> rot)
    {
        int qk = Q + Kv, stride = qk + Kv, hd = Hd;
        var pair = _pair;
        for (int t = 0; t < T; t++)
        {
            var a = qkv.Slice(t * stride, qk); var o = rot.Slice(t * qk, qk);
            var cos = _cosHost.AsSpan(positions[t] * hd, hd); var sin = _sinHost.AsSpan(positions[t] * hd, hd);
            for (int j = 0; j < qk; j += hd)
            {
                var head = a.Slice(j, hd);
                for (int i = 0; i < hd; i++) o[j + i] = head[i] * cos[i] + head[pair[i]] * sin[i];
            }
        }
    }

    /// <summary>The embedding rows of the tokens into x [T, D].</summary>
    void EmbedRows(ReadOnlySpan<int> tokens, Span<float> x)
    {
        var e = Floats(Embedding); int d = Config.Dim;
        for (int i = 0; i < tokens.Length; i++) e.Slice(tokens[i] * d, d).CopyTo(x.Slice(i * d, d));
    }

    /// <summary>output[r] = RMSNorm(x[r]) (times <paramref name="weight"/> if given) for the first n rows of D.</summary>
    void NormRows(ReadOnlySpan<float> x, Span<float> output, int n, ReadOnlySpan<float> weight = default)
    {
        int d = Config.Dim;
        float eps = (float)Config.NormEps;
        for (int r = 0; r < n; r++)
        {
            var row = output.Slice(r * d, d);
            ManagedMath.RmsNorm(x.Slice(r * d, d), row, eps);
            if (!weight.IsEmpty) for (int i = 0; i < d; i++) row[i] *= weight[i];
        }
    }

    /// <summary>act[r] = silu(gate[r]) ⊙ up[r] for the first n rows of gu [n, 2·Hff] (gate | up) into act [n, Hff].</summary>
    void SwiGluRows(ReadOnlySpan<float> gu, Span<float> act, int n)
    {
        int hff = Config.HiddenDim;
        for (int r = 0; r < n; r++)
            ManagedMath.SwiGlu(gu.Slice(r * 2 * hff, hff), gu.Slice(r * 2 * hff + hff, hff), act.Slice(r * hff, hff));
    }

    /// <summary>A CPU tensor's float32 memory, in place (the tensor must be contiguous float32 on the CPU).</summary>
    static Span<float> Floats(Tensor t) => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.bytes);

    // The tensor path's kernels: the same C# products, norms and SwiGLU over tensors' memory.

    protected override Tensor Embed(ReadOnlySpan<int> tokens)
    {
        var x = empty(tokens.Length, Config.Dim, device: Device);                          // [T, D]: embedding rows copied
        EmbedRows(tokens, Floats(x));
        return x;
    }

    protected override Tensor Norm(Tensor x, int n, Tensor? weight = null)
    {
        var output = empty(n, Config.Dim, device: Device);
        NormRows(Floats(x), Floats(output), n, weight is null ? default : Floats(weight));
        return output;
    }

    protected override Tensor Qkv(int layer, Tensor h, int n) => _layers[layer].Qkv.Linear(h, n, bias: _layers[layer].QkvBias);
    protected override Tensor Partners(Tensor qkv, Tensor a, int n) => a.index_select(2, _pairIdx);
    protected override int VOffset => Q + Kv;
    protected override Tensor Out(int layer, Tensor attn, int n, Tensor residual) => _layers[layer].Wo.Linear(attn, n, residual);
    protected override Tensor GateUp(int layer, Tensor h, int n) => _layers[layer].W13.Linear(h, n);

    protected override Tensor SwiGlu(Tensor gu, int n)
    {
        var act = empty(n, Config.HiddenDim, device: Device);
        SwiGluRows(Floats(gu), Floats(act), n);
        return act;
    }

    protected override Tensor Down(int layer, Tensor act, int n, Tensor residual) => _layers[layer].W2.Linear(act, n, residual);
    protected override Tensor HeadLogits(Tensor hidden, int n) => LmHead.Linear(hidden, n);

    public override Tensor Logits(Tensor hidden)
    {
        using var wT = _lmHeadWeight.t();   // a view; matmul reads it transposed (training only: decoding goes through the packed head)
        return matmul(hidden, wT);
    }

    public override void Dispose()
    {
        _pairIdx.Dispose();
        base.Dispose();
    }
}
