using Beagle.Compute;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Beagle.Models;

/// <summary>What one target forward returns. Both tensors are owned by the caller (outside the forward's dispose scope).</summary>
/// <param name="Logits">[T, V] (or [1, V] when only the last row was asked for).</param>
/// <param name="Hidden">[T, D]: the top hidden state of every position, i.e. the LM head's input (after the final norm).</param>
public sealed record ForwardOutput(Tensor Logits, Tensor Hidden) : IDisposable
{
    public void Dispose() { Logits.Dispose(); Hidden.Dispose(); }
}

/// <summary>One sequence's new rows in a batched forward (<see cref="LlamaModel.ForwardBatch(IReadOnlyList{SequenceRows})"/>).</summary>
/// <param name="Cache">The sequence's own cache; its rows go to slots [Cache.Length, Cache.Length + T).</param>
/// <param name="Tokens">T token ids.</param>
/// <param name="Positions">T rotary positions (a chain: Length..Length+T-1; a tree: Length + depth).</param>
/// <param name="Parents">null: the rows are a chain (causal). Else T parent rows of a tree (-1 for row 0, every other
/// row's parent an earlier row): a row sees the cached slots, its ancestors and itself.</param>
public readonly record struct SequenceRows(KvCache Cache, int[] Tokens, int[] Positions, int[]? Parents = null);

/// <summary>
/// A Llama-family decoder (llama2.c, Llama 2/3, Qwen2, Mistral) for inference, in fp32.
///
/// Built for a small number of tensor ops per layer, because on a CPU at stories260K's size each op costs a few
/// microseconds of overhead and the FLOPs are negligible: q, k, their rotary partners and v come out of one
/// fused matmul with the RMSNorm weight folded in; rotary is one mul and one addcmul; the output and down projections
/// add the residual in the same addmm; gate and up share one matmul; the KV cache is written in place.
/// That is the path of other devices. On the CPU a forward of a few tokens (decoding, verification) is C# from start to
/// end over pooled arrays (ForwardCpu): products over weights packed once at load
/// (<see cref="PackedMatrix"/>), RMSNorm, rotary, attention (<see cref="ManagedAttention"/>), SwiGLU, the embedding
/// lookup; only its two outputs are tensors. Long prefills keep libtorch's attention (with the C# products, norms and
/// SwiGLU over tensors). Without per-op and per-tensor costs a stories260K step went from ~270 to ~42 µs
/// (docs/benchmarks.md).
/// Folding the norm weight into the matmul changes rounding only at the 1e-7 level; the golden tests hold it to the
/// reference's tokens and to 1e-4 on logits.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    /// <summary>
    /// One layer's matrices, held once: on the CPU packed for the C# products (<see cref="PackedMatrix"/>: faster than
    /// libtorch's at every row count measured, one thread), on other devices as libtorch tensors.
    /// </summary>
    sealed class Layer : IDisposable
    {
        // Shapes: qkv [D, 2*(Q+K) + K]: q | k | q-partner | k-partner | v (other devices; on the CPU [D, Q+2K]: q | k | v,
        // rotary partners read in C#), attn norm folded in; o [Q, D];
        // gate|up [D, 2*Hff], ffn norm folded in; down [Hff, D]; qkv bias [2*(Q+K) + K] or null.
        public Tensor? WqkvT, Bqkv, WoT, W13T, W2T;     // non-CPU devices
        public PackedMatrix? Qkv, Wo, W13, W2;           // CPU
        public float[]? QkvBias;                         // CPU
        public void Dispose() { WqkvT?.Dispose(); Bqkv?.Dispose(); WoT?.Dispose(); W13T?.Dispose(); W2T?.Dispose(); }
    }

    readonly Layer[] _layers;
    readonly Tensor _finalNorm;   // [D]
    readonly Tensor? _lmHeadT;        // [D, V], non-CPU devices
    readonly PackedMatrix? _lmHead;   // the same, packed, CPU
    readonly RotaryTables _rope;
    readonly float[]? _cosHost, _sinHost;   // [maxPos, hd], CPU: the rotary tables for the C# rotation
    readonly int[] _pair;                   // [hd]: each head dimension's rotary partner
    readonly Tensor? _pairIdx;              // the same as a tensor (CPU tensor path: partners gathered, not projected)
    readonly int _q, _kv, _hd, _h, _kvh, _g;
    // Scalars kept alive for the model's lifetime. TorchSharp's implicit double→Scalar conversion creates a native
    // object that the GC may finalise while libtorch still reads it (seen as a rare "c10::Scalar::toDouble"/"toFloat"
    // check failure under load); fields cannot be collected mid-call. The same holds for the alpha TorchSharp creates
    // when add_ is called without one, so every add_ here passes _oneS explicitly.
    readonly Scalar _epsS, _oneS;

    public ModelConfig Config { get; }
    public Device Device { get; }
    /// <summary>[V, D], frozen. Shared with drafts (they must not modify it).</summary>
    public Tensor Embedding { get; }
    /// <summary>[V, D], frozen. Same tensor as <see cref="Embedding"/> when the model ties them.</summary>
    public Tensor LmHeadWeight { get; }
    /// <summary>[D] final RMSNorm weight.</summary>
    public Tensor FinalNormWeight => _finalNorm;

    public LlamaModel(LlamaWeights w, Device? device = null)
    {
        Config = w.Config.Validate();
        Device = device ?? CPU;
        var c = Config;
        (_hd, _h, _kvh, _g, _q, _kv) = (c.EffectiveHeadDim, c.Heads, c.KvHeads, c.GroupSize, c.QDim, c.KvDim);
        _rope = new RotaryTables(_hd, c.MaxSeqLen, c.RopeTheta, c.RopeLayout, c.RopeScaling, Device);
        if (Device.type == DeviceType.CPU) { _cosHost = _rope.Cos.data<float>().ToArray(); _sinHost = _rope.SinSigned.data<float>().ToArray(); }
        _epsS = c.NormEps.ToScalar(); _oneS = 1.0.ToScalar();
        _pair = Array.ConvertAll(_rope.Pair, p => (int)p);
        if (Device.type == DeviceType.CPU) _pairIdx = tensor(_rope.Pair).DetachFromDisposeScope();
        // Attention's 1/sqrt(hd) is folded into the q rows (rotary is linear, so scaling before it is the same), which
        // saves the scaling op per layer and lets a masked forward compute scores and mask in one baddbmm.
        // An explicit Scalar held for the whole constructor: TorchSharp's implicit float→Scalar may be finalised mid-call.
        using var qScale = (1.0 / Math.Sqrt(_hd)).ToScalar();

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Tensor Keep(Tensor t) => t.to(float32).to(Device).contiguous().DetachFromDisposeScope();

        Embedding = Keep(w.TokenEmbedding);
        LmHeadWeight = w.LmHead is null ? Embedding : Keep(w.LmHead);
        bool cpu = Device.type == DeviceType.CPU;
        if (cpu) _lmHead = PackedMatrix.FromTensor(LmHeadWeight.t());
        else _lmHeadT = Keep(LmHeadWeight.t());
        _finalNorm = Keep(w.FinalNorm);

        // Row permutation that maps each head dimension to its rotary partner, for q (H heads) and k (kvH heads).
        long[] PartnerRows(int heads)
        {
            var idx = new long[heads * _hd];
            for (int h = 0; h < heads; h++) for (int j = 0; j < _hd; j++) idx[h * _hd + j] = h * _hd + _rope.Pair[j];
            return idx;
        }
        var qPair = tensor(PartnerRows(_h)); var kPair = tensor(PartnerRows(_kvh));

        _layers = new Layer[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            var lw = w.Layers[l];
            var an = lw.AttnNorm.unsqueeze(0);
            var wq = lw.Wq * an * qScale; var wk = lw.Wk * an; var wv = lw.Wv * an;
            // The partner rows let other devices rotate with one mul and one addcmul; on the CPU they would be 75 % more
            // qkv weights to stream per token (12 % of a stories5M step), and C# reads the partners from q and k instead.
            var wqkv = cpu ? cat([wq, wk, wv], 0) : cat([wq, wk, wq.index_select(0, qPair), wk.index_select(0, kPair), wv], 0);   // [Q+2K or 2(Q+K)+K, D]
            Tensor? b = null;
            if (c.QkvBias)
            {
                if (lw.Bq is null || lw.Bk is null || lw.Bv is null) throw new InvalidDataException($"layer {l}: qkv bias expected (qwen2) but missing");
                var bq = lw.Bq * qScale;
                b = cpu ? cat([bq, lw.Bk, lw.Bv], 0) : cat([bq, lw.Bk, bq.index_select(0, qPair), lw.Bk.index_select(0, kPair), lw.Bv], 0);
            }
            var fn = lw.FfnNorm.unsqueeze(0);
            var (wqkvT, woT, w13T, w2T) = (wqkv.t(), lw.Wo.t(), cat([lw.W1 * fn, lw.W3 * fn], 0).t(), lw.W2.t());
            _layers[l] = cpu
                ? new Layer { Qkv = PackedMatrix.FromTensor(wqkvT), Wo = PackedMatrix.FromTensor(woT), W13 = PackedMatrix.FromTensor(w13T), W2 = PackedMatrix.FromTensor(w2T), QkvBias = b?.to(float32).data<float>().ToArray() }
                : new Layer { WqkvT = Keep(wqkvT), Bqkv = b is null ? null : Keep(b), WoT = Keep(woT), W13T = Keep(w13T), W2T = Keep(w2T) };
        }
    }

    /// <summary>Rotary and attention of short forwards in C# on the CPU (<see cref="ManagedAttention"/>); off = libtorch's ops (tests compare the two).</summary>
    internal bool UseManagedAttention { get; set; } = true;

    /// <summary>A fresh KV cache for one sequence of at most <paramref name="capacity"/> positions (default: the model's context).</summary>
    public KvCache NewCache(int? capacity = null)
    {
        int cap = capacity ?? Config.MaxSeqLen;
        if (cap <= 0 || cap > Config.MaxSeqLen) throw new ArgumentOutOfRangeException(nameof(capacity), $"capacity must be in [1, {Config.MaxSeqLen}], got {cap}");
        return new KvCache(Config, cap, Device);
    }

    /// <summary>
    /// Runs T new tokens of one sequence through the model, writing their keys and values into
    /// <paramref name="cache"/> at slots [cache.Length, cache.Length+T) and advancing cache.Length by T.
    /// </summary>
    /// <param name="tokens">T token ids.</param>
    /// <param name="positions">T rotary positions (for a chain: Length..Length+T-1; for a tree: Length + depth).</param>
    /// <param name="mask">[T, Length+T] bool, true = may attend; null = causal over the new tokens, all cached slots visible.</param>
    /// <param name="lastLogitsOnly">Compute logits for the last row only (prefill); Hidden still covers all T rows.</param>
    public ForwardOutput Forward(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, Tensor? mask = null, bool lastLogitsOnly = false)
    {
        int T = tokens.Length;
        if (T == 0) throw new ArgumentException("no tokens to run", nameof(tokens));
        if (positions.Length != T) throw new ArgumentException($"{positions.Length} positions for {T} tokens", nameof(positions));
        int start = cache.Length;
        int S = start + T;
        if (mask is not null && mask.shape is var ms && (ms.Length != 2 || ms[0] != T || ms[1] != S))   // (shape costs ~1 µs per read)
            throw new ArgumentException($"mask must be [{T}, {S}], got [{string.Join(", ", ms)}]", nameof(mask));
        var vocab = Config.VocabSize;
        for (int i = 0; i < T; i++)
        {
            if ((uint)tokens[i] >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} is outside the vocabulary (size {vocab})");
            if ((uint)positions[i] >= (uint)_rope.MaxPositions) throw new ArgumentOutOfRangeException(nameof(positions), $"position {positions[i]} is beyond the context length {_rope.MaxPositions}");
        }
        // Decoding and verification (a few new tokens, CPU): the whole forward in C# over pooled arrays (ForwardCpu).
        // Longer prefills and other devices: libtorch ops (and on the CPU, C# products, norms and SwiGLU over tensors).
        bool managed = UseManagedAttention && Device.type == DeviceType.CPU && T <= ManagedAttention.MaxTokens;
        MaskedSlots? masked = null;
        if (managed)
        {
            if (mask is not null) masked = new MaskedSlots(MaskArray(mask), T, S);
            else masked = WindowMask(T, start);
        }
        cache.Advance(T);
        if (managed) return ForwardCpu(cache, tokens, positions, start, masked, lastLogitsOnly);

        using var scope = NewDisposeScope();
        using var _ = inference_mode();   // skips autograd and version-counter bookkeeping: fewer µs per op than no_grad
        var tokArr = new long[T]; var posArr = new long[T];
        for (int i = 0; i < T; i++) { tokArr[i] = tokens[i]; posArr[i] = positions[i]; }
        Tensor x;
        if (Device.type == DeviceType.CPU)
        {
            x = empty(T, Config.Dim, device: Device);                                  // [T, D]: embedding rows copied
            EmbedRows(tokens, Floats(x));
        }
        else x = Embedding.index_select(0, tensor(tokArr, device: Device));
        var pos = tensor(posArr, device: Device);
        var cos = _rope.Cos.index_select(0, pos).unsqueeze(1);                         // [T, 1, hd]
        var sin = _rope.SinSigned.index_select(0, pos).unsqueeze(1);
        // The additive mask [G*T, S] (rows ordered (group, t) like the stacked queries below), built in C# and uploaded
        // as one tensor: converting and repeating a bool mask with tensor ops cost four ops per forward.
        Tensor? m = null;
        if (mask is not null) m = AdditiveMask(mask, T, S);
        else if (T > 1 || (Config.SlidingWindow is { } w0 && S > w0)) m = AdditiveMask(CausalAllowed(T, start), T, S);
        Tensor? slots = null;     // the cache slots written

        for (int l = 0; l < _layers.Length; l++)
        {
            var (k, v, q) = Project(_layers[l], x, cos, sin, 1, T);             // k, v: [T, kvH, hd]; q: [T, H, hd] (views)
            slots ??= T == 1 ? tensor(new long[] { start }, device: Device) : arange(start, S, dtype: ScalarType.Int64, device: Device);
            cache.K[l].index_copy_(2, slots, k.permute(1, 2, 0));                     // cache layer: [kvH, hd, capacity]
            cache.V[l].index_copy_(2, slots, v.permute(1, 2, 0));
            var kT = cache.K[l].narrow(2, 0, S);                                       // [kvH, hd, S], a view: keys transposed
            var vv = cache.V[l].narrow(2, 0, S).transpose(1, 2);                       // [kvH, S, hd], a strided view
            // GQA: the G query heads sharing a kv head are stacked along the query axis, [kvH, G*T, hd].
            // One token needs no permutation at all (the common case of plain decoding): 4 fewer ops per layer.
            var qq = T == 1 ? q.view(_kvh, _g, _hd) : q.view(T, _kvh, _g, _hd).permute(1, 2, 0, 3).reshape(_kvh, _g * T, _hd);
            // Plain ops (scores with the additive mask in one baddbmm, softmax, weighted sum) instead of SDPA, with or
            // without a mask: SDPA's math path re-checks a mask for fully masked rows in every layer, and even unmasked
            // one-token steps were 20-30 % slower through SDPA than explicit ops (docs/benchmarks.md, profiling log).
            var scores = m is null ? qq.bmm(kT) : TorchOps.MaskedScores(m, qq, kT);   // [kvH, G*T, S], q pre-scaled
            var o = scores.softmax(-1).bmm(vv);                                        // [kvH, G*T, hd]
            var oo = T == 1 ? o.reshape(1, _q) : o.view(_kvh, _g, T, _hd).permute(2, 0, 1, 3).reshape(T, _q);
            x = Mlp(_layers[l], x, oo, T);
        }
        var hidden = RmsNorm(x, T, _finalNorm);                                         // [T, D]
        var logits = lastLogitsOnly ? Linear(hidden.narrow(0, T - 1, 1), 1, _lmHead, _lmHeadT) : Linear(hidden, T, _lmHead, _lmHeadT);   // [T or 1, V]
        return new ForwardOutput(logits.MoveToOuterDisposeScope(), hidden.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// The CPU forward of a few new tokens (decoding, verification), start to end in C#: the intermediates live in arrays
    /// rented from the shared pool and only the two outputs are tensors. Through tensors every intermediate was a libtorch
    /// allocation plus TorchSharp's bookkeeping, ~40 per stories260K forward and ~25 % of a one-token step (`perf`,
    /// docs/benchmarks.md). The arithmetic is the tensor path's, kernel for kernel (products <see cref="PackedMatrix"/>,
    /// attention <see cref="ManagedAttention"/>), so results are bit-identical to it. The cache slots are already reserved.
    /// </summary>
    ForwardOutput ForwardCpu(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, int start, MaskedSlots? masked, bool lastLogitsOnly)
        => ForwardCpu([new Segment(cache, 0, tokens.Length, start, masked)], tokens, positions, lastLogitsOnly);

    /// <summary>One sequence's rows in a CPU forward: rows [Row, Row + Count) of the batch, written at cache slots [Start, Start + Count).</summary>
    readonly record struct Segment(KvCache Cache, int Row, int Count, int Start, MaskedSlots? Masked);

    /// <summary>
    /// One new token for each of several sequences in one forward (see <see cref="ForwardBatch(IReadOnlyList{SequenceRows})"/>).
    /// Used to generate training data in batches; the caches' slots advance by one each.
    /// </summary>
    /// <param name="caches">B caches, one per sequence (distinct).</param>
    /// <param name="tokens">B token ids, row b for caches[b].</param>
    /// <returns>Logits [B, V] and hidden states [B, D], owned by the caller.</returns>
    public ForwardOutput ForwardBatch(IReadOnlyList<KvCache> caches, ReadOnlySpan<int> tokens)
    {
        int B = tokens.Length;
        if (B == 0 || caches.Count != B) throw new ArgumentException($"{caches.Count} caches for {B} tokens", nameof(caches));
        var rows = new SequenceRows[B];
        for (int b = 0; b < B; b++) rows[b] = new SequenceRows(caches[b], [tokens[b]], [caches[b].Length]);
        return ForwardBatch(rows);
    }

    /// <summary>
    /// New rows of several sequences in one forward: sequence b's T_b tokens are written into its own cache at slots
    /// [Length_b, Length_b + T_b) (each Length advances by T_b), and attend to that cache only. On the CPU the products
    /// run over all rows stacked (a pass over the weights serves every sequence: a memory-bound step costs little more
    /// for several sequences than for one), attention runs per sequence over its own cache. Each row's results are
    /// bit-identical to running its sequence alone through <see cref="Forward"/> (the packed kernels sum every output
    /// in one order whatever the row count; BatchInvarianceTests), which is what makes batched greedy decoding give
    /// exactly the output of decoding alone. Sequences with more rows than the C# attention takes, and other devices,
    /// run one <see cref="Forward"/> each (same results, no shared weight pass).
    /// </summary>
    /// <param name="sequences">B sequences with distinct caches; a sequence's rows are a chain (causal) or a tree (parents).</param>
    /// <returns>Logits [ΣT_b, V] and hidden states [ΣT_b, D], sequence b's rows after those of sequences 0..b-1; owned by the caller.</returns>
    public ForwardOutput ForwardBatch(IReadOnlyList<SequenceRows> sequences)
    {
        int B = sequences.Count;
        if (B == 0) throw new ArgumentException("no sequences to run", nameof(sequences));
        int total = 0;
        bool managed = UseManagedAttention && Device.type == DeviceType.CPU;
        for (int b = 0; b < B; b++)
        {
            var sq = sequences[b];
            int T = sq.Tokens.Length;
            if (T == 0) throw new ArgumentException($"sequence {b} has no tokens to run", nameof(sequences));
            if (sq.Positions.Length != T) throw new ArgumentException($"sequence {b}: {sq.Positions.Length} positions for {T} tokens", nameof(sequences));
            if (sq.Parents is { } parents)
            {
                if (parents.Length != T) throw new ArgumentException($"sequence {b}: {parents.Length} parents for {T} tokens", nameof(sequences));
                for (int i = 0; i < T; i++)
                    if (i == 0 ? parents[i] != -1 : parents[i] < 0 || parents[i] >= i)
                        throw new ArgumentException($"sequence {b}, row {i}: parent {parents[i]}; row 0 is the root (-1), every other row's parent is an earlier row", nameof(sequences));
            }
            for (int i = 0; i < T; i++)
            {
                if ((uint)sq.Tokens[i] >= (uint)Config.VocabSize) throw new ArgumentOutOfRangeException(nameof(sequences), $"sequence {b}: token id {sq.Tokens[i]} is outside the vocabulary (size {Config.VocabSize})");
                if ((uint)sq.Positions[i] >= (uint)_rope.MaxPositions) throw new ArgumentOutOfRangeException(nameof(sequences), $"sequence {b}: position {sq.Positions[i]} is beyond the context length {_rope.MaxPositions}");
            }
            for (int c = 0; c < b; c++) if (ReferenceEquals(sequences[c].Cache, sq.Cache)) throw new ArgumentException($"sequences {c} and {b} share one cache", nameof(sequences));
            if (sq.Cache.Length + T > sq.Cache.Capacity)
                throw new InvalidOperationException($"sequence {b}: {sq.Cache.Length + T} positions exceed its cache's capacity ({sq.Cache.Capacity})");
            if (T > ManagedAttention.MaxTokens) managed = false;
            total += T;
        }
        if (!managed)
        {
            if (B == 1) return ForwardRows(sequences[0]);
            var parts = new ForwardOutput[B];
            try
            {
                for (int b = 0; b < B; b++) parts[b] = ForwardRows(sequences[b]);
                using var scope = NewDisposeScope();
                return new ForwardOutput(cat(parts.Select(p => p.Logits).ToArray(), 0).MoveToOuterDisposeScope(),
                    cat(parts.Select(p => p.Hidden).ToArray(), 0).MoveToOuterDisposeScope());
            }
            finally { foreach (var p in parts) p?.Dispose(); }
        }
        var tokens = new int[total]; var positions = new int[total];
        var segments = new Segment[B];
        for (int b = 0, row = 0; b < B; b++)
        {
            var sq = sequences[b];
            int T = sq.Tokens.Length, start = sq.Cache.Length;
            sq.Tokens.CopyTo(tokens, row); sq.Positions.CopyTo(positions, row);
            var masked = sq.Parents is { } parents ? new MaskedSlots(TreeAllowed(parents, start), T, start + T) : WindowMask(T, start);
            segments[b] = new Segment(sq.Cache, row, T, sq.Cache.Advance(T), masked);
            row += T;
        }
        return ForwardCpu(segments, tokens, positions, lastLogitsOnly: false);
    }

    /// <summary>One sequence's rows through <see cref="Forward"/> (the tree mask built from its parents).</summary>
    ForwardOutput ForwardRows(SequenceRows sq)
    {
        if (sq.Parents is null) return Forward(sq.Cache, sq.Tokens, sq.Positions);
        int start = sq.Cache.Length, T = sq.Tokens.Length;
        using var mask = tensor(TreeAllowed(sq.Parents, start), [T, start + T], device: Device);
        return Forward(sq.Cache, sq.Tokens, sq.Positions, mask);
    }

    /// <summary>
    /// [T, start+T] bool for a tree of T new rows: every row sees the committed slots [0, start) and the slots of its
    /// ancestors and itself (the tree attention mask; DraftTree.Mask builds the same).
    /// </summary>
    static bool[] TreeAllowed(int[] parents, int start)
    {
        int T = parents.Length, S = start + T;
        var data = new bool[T * S];
        for (int i = 0; i < T; i++)
        {
            Array.Fill(data, true, i * S, start);
            for (int a = i; a >= 0; a = parents[a]) data[i * S + start + a] = true;
        }
        return data;
    }

    ForwardOutput ForwardCpu(Segment[] segments, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, bool lastLogitsOnly)
    {
        int T = tokens.Length, d = Config.Dim, hff = Config.HiddenDim, S = 0;
        foreach (var sg in segments) S = Math.Max(S, sg.Start + sg.Count);
        int qkvWidth = _q + 2 * _kv;                                                          // q | k | v
        var pool = System.Buffers.ArrayPool<float>.Shared;
        float[] x = pool.Rent(T * d), h = pool.Rent(T * d), qkv = pool.Rent(T * qkvWidth), rot = pool.Rent(T * (_h + _kvh) * _hd),
            attn = pool.Rent(T * _q), gu = pool.Rent(T * 2 * hff), act = pool.Rent(T * hff), scores = pool.Rent(2 * S);
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
                    layer.Qkv!.Multiply(h, T, qkv, qkv);                                       // [T, 2(Q+K)+K] = bias + h·Wqkv
                }
                else layer.Qkv!.Multiply(h, T, qkv, null);
                Rotate(qkv, T, positions, rot);
                foreach (var sg in segments)                                                   // attn: [T, Q]
                    ManagedAttention.Run(rot.AsSpan(sg.Row * (_h + _kvh) * _hd), qkv.AsSpan(sg.Row * qkvWidth), qkvWidth, _q + _kv,
                        Floats(sg.Cache.K[l]), Floats(sg.Cache.V[l]), sg.Cache.Capacity, _h, _kvh, _hd, sg.Start, sg.Count, sg.Masked,
                        attn.AsSpan(sg.Row * _q), scores);
                layer.Wo!.Multiply(attn, T, x, x);                                            // x += attn·Wo
                NormRows(x, h, T);
                layer.W13!.Multiply(h, T, gu, null);                                           // [T, 2*Hff]: gate | up
                SwiGluRows(gu, act, T);
                layer.W2!.Multiply(act, T, x, x);                                              // x += act·W2
            }
            using var scope = NewDisposeScope();
            var hidden = empty(T, d, device: Device);                                          // [T, D]: final RMSNorm
            NormRows(x, Floats(hidden), T, Floats(_finalNorm));
            var logits = lastLogitsOnly ? _lmHead!.Linear(hidden.narrow(0, T - 1, 1), 1) : _lmHead!.Linear(hidden, T);   // [T or 1, V]
            return new ForwardOutput(logits.MoveToOuterDisposeScope(), hidden.MoveToOuterDisposeScope());
        }
        finally
        {
            pool.Return(x); pool.Return(h); pool.Return(qkv); pool.Return(rot); pool.Return(attn); pool.Return(gu); pool.Return(act); pool.Return(scores);
        }
    }

    /// <summary>The embedding rows of the tokens into x [T, D] (CPU).</summary>
    void EmbedRows(ReadOnlySpan<int> tokens, Span<float> x)
    {
        var e = Floats(Embedding); int d = Config.Dim;
        for (int i = 0; i < tokens.Length; i++) e.Slice(tokens[i] * d, d).CopyTo(x.Slice(i * d, d));
    }

    /// <summary>output[r] = RMSNorm(x[r]) (times <paramref name="weight"/> if given; the layers' weights are folded into the next product) for the first n rows of D.</summary>
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

    /// <summary>
    /// Top hidden states of a batch of sequences, causal, no cache (feature extraction for training).
    /// tokens: [B, T] int64, positions 0..T-1. Returns [B, T, D], owned by the caller.
    /// </summary>
    public Tensor HiddenStates(Tensor tokens)
    {
        if (tokens.dim() != 2) throw new ArgumentException("tokens must be [B, T]", nameof(tokens));
        int B = (int)tokens.shape[0], T = (int)tokens.shape[1];
        if (T > Config.MaxSeqLen) throw new ArgumentException($"sequence length {T} exceeds the context length {Config.MaxSeqLen}");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var x = Embedding.index_select(0, tokens.reshape(-1).to(Device));               // [B*T, D]
        var cos = _rope.Cos.narrow(0, 0, T).repeat(B, 1).unsqueeze(1);                 // [B*T, 1, hd]
        var sin = _rope.SinSigned.narrow(0, 0, T).repeat(B, 1).unsqueeze(1);
        var m = AdditiveMask(CausalAllowed(T, 0), T, T);                              // [G*T, T]
        foreach (var layer in _layers)
        {
            var (k, v, q) = Project(layer, x, cos, sin, B, T);
            var kk = k.view(B, T, _kvh, _hd).permute(0, 2, 1, 3);                      // [B, kvH, T, hd]
            var vv = v.view(B, T, _kvh, _hd).permute(0, 2, 1, 3);
            x = Mlp(layer, x, Attend(q, kk, vv, m, B, T), B * T);
        }
        return RmsNorm(x, B * T, _finalNorm).view(B, T, -1).MoveToOuterDisposeScope();
    }

    /// <summary>The LM head packed for the C# products ([D, V]), CPU only; drafts with the full vocabulary share it.</summary>
    internal PackedMatrix? PackedLmHead => _lmHead;

    /// <summary>Logits through the frozen LM head: hidden [..., D] → [..., V].</summary>
    public Tensor Logits(Tensor hidden)
    {
        if (_lmHeadT is not null) return matmul(hidden, _lmHeadT);
        using var wT = LmHeadWeight.t();   // a view; matmul reads it transposed (training only: the CPU decodes through _lmHead)
        return matmul(hidden, wT);
    }

    /// <summary>The hidden slots of T causal rows from <paramref name="start"/> when a sliding window hides any; else null (plain causal).</summary>
    MaskedSlots? WindowMask(int T, int start) =>
        Config.SlidingWindow is { } w && start + T > w ? new MaskedSlots(CausalAllowed(T, start), T, start + T) : null;

    /// <summary>[T, start+T] bool: row i (slot start+i) sees slots ≤ start+i within the sliding window.</summary>
    bool[] CausalAllowed(int T, int start)
    {
        int S = start + T;
        var data = new bool[T * S];
        int window = Config.SlidingWindow ?? int.MaxValue;
        for (int i = 0; i < T; i++)
            for (int j = 0; j <= start + i; j++)
                data[i * S + j] = (start + i) - j < window;
        return data;
    }

    /// <summary>An additive float mask [G*T, S] (0 = may attend, -inf = masked), the T rows repeated for each of the G query heads of a kv head.</summary>
    Tensor AdditiveMask(ReadOnlySpan<bool> allowed, int T, int S)
    {
        var data = new float[_g * T * S];
        for (int r = 0; r < T * S; r++) if (!allowed[r]) data[r] = float.NegativeInfinity;
        for (int g = 1; g < _g; g++) Array.Copy(data, 0, data, g * T * S, T * S);
        return tensor(data, [_g * T, S], device: Device);
    }

    /// <summary>A CPU tensor's float32 memory, in place (the tensor must be contiguous float32 on the CPU).</summary>
    static Span<float> Floats(Tensor t) => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.bytes);

    static bool[] MaskArray(Tensor mask)
    {
        if (mask.dtype != ScalarType.Bool)
            throw new ArgumentException($"mask must be a bool tensor (true = may attend), got {mask.dtype}", nameof(mask));
        using var host = mask.device_type == DeviceType.CPU && mask.is_contiguous() ? null : mask.cpu().contiguous();
        return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, bool>((host ?? mask).bytes).ToArray();
    }

    Tensor AdditiveMask(Tensor mask, int T, int S)
    {
        if (mask.dtype != ScalarType.Bool)
            throw new ArgumentException($"mask must be a bool tensor (true = may attend), got {mask.dtype}", nameof(mask));
        using var host = mask.device_type == DeviceType.CPU && mask.is_contiguous() ? null : mask.cpu().contiguous();
        return AdditiveMask(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, bool>((host ?? mask).bytes), T, S);
    }

    /// <summary>RMSNorm of the n rows of x [n, D] (times <paramref name="weight"/> if given): C# on the CPU, 5 ops elsewhere.</summary>
    Tensor RmsNorm(Tensor x, int n, Tensor? weight = null)
    {
        if (Device.type != DeviceType.CPU)
        {
            var y = x * x.mul(x).mean([-1], keepdim: true).add_(_epsS, _oneS).rsqrt_();
            return weight is null ? y : y.mul_(weight);
        }
        var output = empty(n, Config.Dim, device: Device);
        NormRows(Floats(x), Floats(output), n, weight is null ? default : Floats(weight));
        return output;
    }

    /// <summary>The fused projection of RMSNorm(x): q | k | v [n, Q + 2K] on the CPU, q | k | q-partner | k-partner | v [n, 2(Q+K) + K] elsewhere.</summary>
    Tensor Qkv(Layer layer, Tensor x, int n)
    {
        var h = RmsNorm(x, n);
        if (layer.Qkv is { } packed) return packed.Linear(h, n, bias: layer.QkvBias);
        return layer.Bqkv is null ? h.mm(layer.WqkvT!) : addmm(layer.Bqkv, h, layer.WqkvT!, 1, 1);
    }

    /// <summary>
    /// Rotary in C# (CPU, managed path): rot[t] = (q | k) · cos[pos] + (q | k)[partner] · sinSigned[pos], read from the
    /// fused projection qkv [T, Q + 2K] (q | k | v); rot is [T, H + kvH, hd], the layout ManagedAttention reads.
    /// </summary>
    void Rotate(ReadOnlySpan<float> qkv, int T, ReadOnlySpan<int> positions, Span<float> rot)
    {
        int qk = _q + _kv, stride = qk + _kv;
        var pair = _pair;
        for (int t = 0; t < T; t++)
        {
            var a = qkv.Slice(t * stride, qk); var o = rot.Slice(t * qk, qk);
            var cos = _cosHost.AsSpan(positions[t] * _hd, _hd); var sin = _sinHost.AsSpan(positions[t] * _hd, _hd);
            for (int j = 0; j < qk; j += _hd)
            {
                var head = a.Slice(j, _hd);
                for (int i = 0; i < _hd; i++) o[j + i] = head[i] * cos[i] + head[pair[i]] * sin[i];
            }
        }
    }

    /// <returns>k, v: [n, kvH, hd]; q: [n, H, hd] (views of the projection and of the rotated q|k).</returns>
    (Tensor k, Tensor v, Tensor q) Project(Layer layer, Tensor x, Tensor cos, Tensor sin, int B, int T)
    {
        int n = B * T, qk = _q + _kv;
        var qkv = Qkv(layer, x, n);                                                          // [n, qk + kv] (CPU) or [n, 2qk + kv]
        var a = qkv.narrow(1, 0, qk).view(n, _h + _kvh, _hd);
        var p = _pairIdx is not null ? a.index_select(2, _pairIdx) : qkv.narrow(1, qk, qk).view(n, _h + _kvh, _hd);
        var r = addcmul(a * cos, p, sin, _oneS);                                                    // rotary, [n, H+kvH, hd]
        var q = r.narrow(1, 0, _h);                                                           // [n, H, hd]
        var k = r.narrow(1, _h, _kvh);                                                        // [n, kvH, hd]
        var v = qkv.narrow(1, _pairIdx is not null ? qk : 2 * qk, _kv).view(n, _kvh, _hd);
        return (k, v, q);
    }

    /// <summary>Batched GQA attention (no cache): q [B*T, H, hd] (pre-scaled), kk/vv [B, kvH, S, hd], additive mask [G*T, S] → [B*T, Q].</summary>
    Tensor Attend(Tensor q, Tensor kk, Tensor vv, Tensor mask, int B, int T)
    {
        // Explicit attention (not SDPA): q already carries 1/sqrt(hd), which TorchSharp's SDPA cannot be told.
        var qq = q.view(B, T, _kvh, _g, _hd).permute(0, 2, 3, 1, 4).reshape(B, _kvh, _g * T, _hd);
        var o = matmul(qq, kk.transpose(-2, -1)).add_(mask, _oneS).softmax(-1).matmul(vv);   // [B, kvH, G*T, hd]
        return o.view(B, _kvh, _g, T, _hd).permute(0, 3, 1, 2, 4).reshape(B * T, _q);
    }

    /// <summary>Output projection with the residual, then the SwiGLU MLP with the residual. x: [n, D], oo: [n, Q].</summary>
    /// <remarks>Sizes are passed, not read from the tensors: TorchSharp's <c>shape</c> costs ~1 µs per read (measured), ~5 % of a step here.</remarks>
    Tensor Mlp(Layer layer, Tensor x, Tensor oo, int n)
    {
        x = Linear(oo, n, layer.Wo, layer.WoT, residual: x);                                  // residual + Wo·attn
        var gu = Linear(RmsNorm(x, n), n, layer.W13, layer.W13T);                              // [n, 2*Hff]
        int hff = Config.HiddenDim;
        Tensor act;
        if (Device.type == DeviceType.CPU)
        {
            act = empty(n, hff, device: Device);
            SwiGluRows(Floats(gu), Floats(act), n);
        }
        else act = F.silu(gu.narrow(1, 0, hff)).mul_(gu.narrow(1, hff, hff));
        return Linear(act, n, layer.W2, layer.W2T, residual: x);                               // residual + W2·act
    }

    /// <summary>(residual +) x · W for x [n, K]: the packed product on the CPU, libtorch's (add)mm elsewhere. Returns [n, N].</summary>
    Tensor Linear(Tensor x, int n, PackedMatrix? packed, Tensor? wT, Tensor? residual = null)
    {
        if (packed is not null) return packed.Linear(x, n, residual);
        return residual is null ? x.mm(wT!) : addmm(residual, x, wT!, 1, 1);
    }

    public void Dispose()
    {
        foreach (var l in _layers) l.Dispose();
        _finalNorm.Dispose(); _lmHeadT?.Dispose(); _rope.Dispose(); _pairIdx?.Dispose();
        _epsS.Dispose(); _oneS.Dispose();
        if (!ReferenceEquals(LmHeadWeight, Embedding)) LmHeadWeight.Dispose();
        Embedding.Dispose();
    }
}
