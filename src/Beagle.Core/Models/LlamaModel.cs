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

/// <summary>
/// A Llama-family decoder (llama2.c, Llama 2/3, Qwen2, Mistral) for inference, in fp32.
///
/// Built for a small number of tensor ops per layer, because on a CPU at stories260K's size each op costs a few
/// microseconds of overhead and the FLOPs are negligible (issue #2): q, k, their rotary partners and v come out of one
/// fused matmul with the RMSNorm weight folded in; rotary is one mul and one addcmul; the output and down projections
/// add the residual in the same addmm; gate and up share one matmul; the KV cache is written in place.
/// Folding the norm weight into the matmul changes rounding only at the 1e-7 level; the golden tests hold it to the
/// reference's tokens and to 1e-4 on logits.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    sealed class Layer : IDisposable
    {
        public required Tensor WqkvT;   // [D, 2*(Q+K) + K]: q | k | q-partner | k-partner | v, attn norm folded in
        public Tensor? Bqkv;            // [2*(Q+K) + K] or null
        public required Tensor WoT;     // [Q, D]
        public required Tensor W13T;    // [D, 2*Hff]: gate | up, ffn norm folded in
        public required Tensor W2T;     // [Hff, D]
        // The same four matrices packed for the C# products of short CPU forwards (null on other devices), and the bias.
        public PackedMatrix? Qkv, Wo, W13, W2;
        public float[]? QkvBias;
        public void Dispose() { WqkvT.Dispose(); Bqkv?.Dispose(); WoT.Dispose(); W13T.Dispose(); W2T.Dispose(); }
    }

    readonly Layer[] _layers;
    readonly Tensor _finalNorm;   // [D]
    readonly Tensor _lmHeadT;     // [D, V]
    readonly PackedMatrix? _lmHead;   // the same, packed (CPU only)
    readonly RotaryTables _rope;
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
        _epsS = c.NormEps.ToScalar(); _oneS = 1.0.ToScalar();
        // Attention's 1/sqrt(hd) is folded into the q rows (rotary is linear, so scaling before it is the same), which
        // saves the scaling op per layer and lets a masked forward compute scores and mask in one baddbmm.
        // An explicit Scalar held for the whole constructor: TorchSharp's implicit float→Scalar may be finalised mid-call.
        using var qScale = (1.0 / Math.Sqrt(_hd)).ToScalar();

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Tensor Keep(Tensor t) => t.to(float32).to(Device).contiguous().DetachFromDisposeScope();

        Embedding = Keep(w.TokenEmbedding);
        LmHeadWeight = w.LmHead is null ? Embedding : Keep(w.LmHead);
        _lmHeadT = Keep(LmHeadWeight.t());
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
            var wqkv = cat([wq, wk, wq.index_select(0, qPair), wk.index_select(0, kPair), wv], 0);   // [2(Q+K)+K, D]
            Tensor? b = null;
            if (c.QkvBias)
            {
                if (lw.Bq is null || lw.Bk is null || lw.Bv is null) throw new InvalidDataException($"layer {l}: qkv bias expected (qwen2) but missing");
                var bq = lw.Bq * qScale;
                b = Keep(cat([bq, lw.Bk, bq.index_select(0, qPair), lw.Bk.index_select(0, kPair), lw.Bv], 0));
            }
            var fn = lw.FfnNorm.unsqueeze(0);
            var layer = _layers[l] = new Layer
            {
                WqkvT = Keep(wqkv.t()),
                Bqkv = b,
                WoT = Keep(lw.Wo.t()),
                W13T = Keep(cat([lw.W1 * fn, lw.W3 * fn], 0).t()),
                W2T = Keep(lw.W2.t()),
            };
            if (Device.type == DeviceType.CPU)
            {
                (layer.Qkv, layer.Wo, layer.W13, layer.W2) = (Pack(layer.WqkvT), Pack(layer.WoT), Pack(layer.W13T), Pack(layer.W2T));
                layer.QkvBias = b?.data<float>().ToArray();
            }
        }
        if (Device.type == DeviceType.CPU) _lmHead = Pack(_lmHeadT);
    }

    static PackedMatrix Pack(Tensor wT) => new(Floats(wT), (int)wT.shape[0], (int)wT.shape[1]);

    /// <summary>
    /// Attention and matrix products of short forwards in C# on the CPU (<see cref="ManagedAttention"/>,
    /// <see cref="PackedMatrix"/>); off = always libtorch (tests compare the two).
    /// </summary>
    internal bool UseManagedKernels { get; set; } = true;

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
        if (mask is not null && (mask.shape.Length != 2 || mask.shape[0] != T || mask.shape[1] != S))
            throw new ArgumentException($"mask must be [{T}, {S}], got [{string.Join(", ", mask.shape)}]", nameof(mask));
        var vocab = Config.VocabSize;
        var tokArr = new long[T]; var posArr = new long[T];
        for (int i = 0; i < T; i++)
        {
            if ((uint)tokens[i] >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} is outside the vocabulary (size {vocab})");
            if ((uint)positions[i] >= (uint)_rope.MaxPositions) throw new ArgumentOutOfRangeException(nameof(positions), $"position {positions[i]} is beyond the context length {_rope.MaxPositions}");
            tokArr[i] = tokens[i]; posArr[i] = positions[i];
        }
        cache.Advance(T);

        using var scope = NewDisposeScope();
        using var _ = inference_mode();   // skips autograd and version-counter bookkeeping: fewer µs per op than no_grad
        var pos = tensor(posArr, device: Device);
        var x = Embedding.index_select(0, tensor(tokArr, device: Device));            // [T, D]
        var cos = _rope.Cos.index_select(0, pos).unsqueeze(1);                         // [T, 1, hd]
        var sin = _rope.SinSigned.index_select(0, pos).unsqueeze(1);

        // Decoding and verification (a few new tokens, CPU): attention and matrix products in C# (ManagedAttention,
        // PackedMatrix: why there). Longer prefills and other devices: libtorch ops.
        bool managed = UseManagedKernels && Device.type == DeviceType.CPU && T <= ManagedAttention.MaxTokens;
        bool[]? allowed = null;   // managed path: [T, S], null = causal
        Tensor? m = null;         // libtorch path: additive mask
        if (managed)
        {
            if (mask is not null) allowed = MaskArray(mask);
            else if (Config.SlidingWindow is { } w0 && S > w0) allowed = CausalAllowed(T, start);
        }
        // The additive mask [G*T, S] (rows ordered (group, t) like the stacked queries below), built in C# and uploaded
        // as one tensor: converting and repeating a bool mask with tensor ops cost four ops per forward.
        else if (mask is not null) m = AdditiveMask(mask, T, S);
        else if (T > 1 || (Config.SlidingWindow is { } w0 && S > w0)) m = AdditiveMask(CausalAllowed(T, start), T, S);
        var scratch = managed ? new float[S] : null;
        Tensor? slots = null;     // libtorch path: the cache slots written

        for (int l = 0; l < _layers.Length; l++)
        {
            var (k, v, q, qkv, rot) = Project(_layers[l], x, cos, sin, 1, T, managed);   // k, v: [T, kvH, hd]; q: [T, H, hd] (views of qkv, rot)
            if (managed)
            {
                var attn = empty(T, _q, device: Device);                               // [T, Q], written below
                ManagedAttention.Run(Floats(rot), Floats(qkv), (int)qkv.shape[1], 2 * (_q + _kv),
                    Floats(cache.K[l]), Floats(cache.V[l]), cache.Capacity, _h, _kvh, _hd, start, T, allowed, Floats(attn), scratch);
                x = Mlp(_layers[l], x, attn, managed);
                continue;
            }
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
            x = Mlp(_layers[l], x, oo, managed);
        }
        var hidden = RmsNorm(x).mul_(_finalNorm);                                      // [T, D]
        Tensor logits;
        if (managed)
        {
            int rows = lastLogitsOnly ? 1 : T, d = Config.Dim;
            logits = empty(rows, Config.VocabSize, device: Device);
            _lmHead!.Multiply(Floats(hidden)[((T - rows) * d)..], rows, Floats(logits));
        }
        else logits = (lastLogitsOnly ? hidden.narrow(0, T - 1, 1) : hidden).mm(_lmHeadT);
        return new ForwardOutput(logits.MoveToOuterDisposeScope(), hidden.MoveToOuterDisposeScope());
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
            var (k, v, q, _, _) = Project(layer, x, cos, sin, B, T, managed: false);
            var kk = k.view(B, T, _kvh, _hd).permute(0, 2, 1, 3);                      // [B, kvH, T, hd]
            var vv = v.view(B, T, _kvh, _hd).permute(0, 2, 1, 3);
            x = Mlp(layer, x, Attend(q, kk, vv, m, B, T), managed: false);
        }
        return RmsNorm(x).mul_(_finalNorm).view(B, T, -1).MoveToOuterDisposeScope();
    }

    /// <summary>Logits through the frozen LM head: hidden [..., D] → [..., V].</summary>
    public Tensor Logits(Tensor hidden) => matmul(hidden, _lmHeadT);

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

    Tensor RmsNorm(Tensor x) => x * x.mul(x).mean([-1], keepdim: true).add_(_epsS, _oneS).rsqrt_();

    /// <returns>k, v, q as views, and the tensors they view: qkv [n, 2(Q+K)+K] and the rotated q|k, rot [n, H+kvH, hd] (both contiguous).</returns>
    /// <param name="managed">Matrix products in C# (<see cref="PackedMatrix"/>): CPU, x contiguous.</param>
    (Tensor k, Tensor v, Tensor q, Tensor qkv, Tensor rot) Project(Layer layer, Tensor x, Tensor cos, Tensor sin, int B, int T, bool managed)
    {
        int n = B * T, qk = _q + _kv;
        var h = RmsNorm(x);
        Tensor qkv;                                                                          // [n, 2qk + kv]
        if (managed)
        {
            qkv = empty(n, layer.Qkv!.Cols, device: Device);
            var y = Floats(qkv);
            if (layer.QkvBias is { } bias) for (int i = 0; i < n; i++) bias.CopyTo(y.Slice(i * bias.Length, bias.Length));
            layer.Qkv.Multiply(Floats(h), n, y, layer.QkvBias is null ? default : y);
        }
        else qkv = layer.Bqkv is null ? h.mm(layer.WqkvT) : addmm(layer.Bqkv, h, layer.WqkvT, 1, 1);
        var a = qkv.narrow(1, 0, qk).view(n, _h + _kvh, _hd);
        var p = qkv.narrow(1, qk, qk).view(n, _h + _kvh, _hd);
        var r = addcmul(a * cos, p, sin, _oneS);                                                    // rotary, [n, H+kvH, hd]
        var q = r.narrow(1, 0, _h);                                                           // [n, H, hd]
        var k = r.narrow(1, _h, _kvh);                                                        // [n, kvH, hd]
        var v = qkv.narrow(1, 2 * qk, _kv).view(n, _kvh, _hd);
        return (k, v, q, qkv, r);
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
    /// <param name="managed">Matrix products in C# (<see cref="PackedMatrix"/>): CPU, x and oo contiguous.</param>
    Tensor Mlp(Layer layer, Tensor x, Tensor oo, bool managed)
    {
        if (managed) return MlpManaged(layer, x, oo);
        x = addmm(x, oo, layer.WoT, 1, 1);                                                     // residual + Wo·attn
        var gu = RmsNorm(x).mm(layer.W13T);                                                    // [n, 2*Hff]
        int hff = (int)gu.shape[1] / 2;
        var act = F.silu(gu.narrow(1, 0, hff)).mul_(gu.narrow(1, hff, hff));
        return addmm(x, act, layer.W2T, 1, 1);                                                 // residual + W2·act
    }

    /// <summary><see cref="Mlp"/> with the products in C#; each residual is the addend of its product (no separate add).</summary>
    Tensor MlpManaged(Layer layer, Tensor x, Tensor oo)
    {
        int n = (int)x.shape[0], d = Config.Dim;
        var x1 = empty(n, d, device: Device);
        layer.Wo!.Multiply(Floats(oo), n, Floats(x1), Floats(x));                            // residual + Wo·attn
        var gu = empty(n, layer.W13!.Cols, device: Device);
        layer.W13.Multiply(Floats(RmsNorm(x1)), n, Floats(gu));                               // [n, 2*Hff]
        int hff = layer.W13.Cols / 2;
        var act = F.silu(gu.narrow(1, 0, hff)).mul_(gu.narrow(1, hff, hff));                  // contiguous: silu's result
        var x2 = empty(n, d, device: Device);
        layer.W2!.Multiply(Floats(act), n, Floats(x2), Floats(x1));                           // residual + W2·act
        return x2;
    }

    public void Dispose()
    {
        foreach (var l in _layers) l.Dispose();
        _finalNorm.Dispose(); _lmHeadT.Dispose(); _rope.Dispose();
        _epsS.Dispose(); _oneS.Dispose();
        if (!ReferenceEquals(LmHeadWeight, Embedding)) LmHeadWeight.Dispose();
        Embedding.Dispose();
    }
}
