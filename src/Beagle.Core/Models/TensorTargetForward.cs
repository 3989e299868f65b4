using TorchSharp;
using static TorchSharp.torch;

namespace Beagle.Models;

/// <summary>
/// The forward over libtorch tensors that both target forwards share: on other devices the whole of it
/// (<see cref="TorchTargetForward"/>), on the CPU long prefills, training features and the reference path the tests
/// compare the C# attention against (<c>Compute/CpuTargetForward</c>). It is written for a small number of tensor ops
/// per layer, because at stories260K's size each op costs a few microseconds of overhead and the FLOPs are negligible:
/// q, k (and on other devices their rotary partners) and v come out of one fused product with the RMSNorm weight
/// folded in; rotary is one mul and one addcmul; the output and down projections add the residual in the same product;
/// gate and up share one product; the KV cache is written in place. What differs by backend, the products, norms,
/// SwiGLU and the embedding lookup, are the abstract members; the weights are folded once by <see cref="Fold"/>.
/// </summary>
internal abstract class TensorTargetForward : ITargetForward
{
    protected readonly ModelConfig Config;
    protected readonly Device Device;
    protected readonly Tensor Embedding;    // [V, D], the model's
    protected readonly Tensor FinalNorm;    // [D], the model's
    protected readonly RotaryTables Rope;
    protected readonly int Q, Kv, Hd, H, KvH, G;
    // Scalars kept alive for the forward's lifetime. TorchSharp's implicit double→Scalar conversion creates a native
    // object that the GC may finalise while libtorch still reads it (seen as a rare "c10::Scalar::toDouble"/"toFloat"
    // check failure under load); fields cannot be collected mid-call. The same holds for the alpha TorchSharp creates
    // when add_ is called without one, so every add_ here passes OneS explicitly.
    protected readonly Scalar EpsS, OneS;

    protected TensorTargetForward(LlamaModel model)
    {
        Config = model.Config; Device = model.Device; Embedding = model.Embedding; FinalNorm = model.FinalNormWeight;
        var c = Config;
        (Hd, H, KvH, G, Q, Kv) = (c.EffectiveHeadDim, c.Heads, c.KvHeads, c.GroupSize, c.QDim, c.KvDim);
        Rope = new RotaryTables(Hd, c.MaxSeqLen, c.RopeTheta, c.RopeLayout, c.RopeScaling, Device);
        EpsS = c.NormEps.ToScalar(); OneS = 1.0.ToScalar();
    }

    /// <summary>
    /// One layer's weights folded for the fused forward (call inside a dispose scope with autograd off): the attention
    /// norm folded into q | k | v and the ffn norm into gate | up; attention's 1/sqrt(hd) folded into the q rows and
    /// bias (rotary is linear, so scaling before it is the same), which saves the scaling op per layer and lets a masked
    /// forward compute scores and mask in one baddbmm. Folding changes rounding only at the 1e-7 level; the golden tests
    /// hold it to the reference's tokens and to 1e-4 on logits.
    /// </summary>
    /// <param name="partners">Also the rotary partner rows of q and k (q | k | q-partner | k-partner | v), so rotary is one
    /// mul and one addcmul; without them q | k | v and the partners are read from q and k.</param>
    /// <returns>qkv [D, Q+2K] or [D, 2(Q+K)+K]; its bias [Q+2K or 2(Q+K)+K] or null; o [Q, D]; gate|up [D, 2*Hff];
    /// down [Hff, D]. All transposed for x·W; in the current dispose scope.</returns>
    protected (Tensor WqkvT, Tensor? Bqkv, Tensor WoT, Tensor W13T, Tensor W2T) Fold(LayerWeights lw, int layer, bool partners)
    {
        // An explicit Scalar held for the call: TorchSharp's implicit float→Scalar may be finalised mid-call.
        using var qScale = (1.0 / Math.Sqrt(Hd)).ToScalar();
        // Row permutation that maps each head dimension to its rotary partner, for q (H heads) and k (kvH heads).
        long[] PartnerRows(int heads)
        {
            var idx = new long[heads * Hd];
            for (int h = 0; h < heads; h++) for (int j = 0; j < Hd; j++) idx[h * Hd + j] = h * Hd + Rope.Pair[j];
            return idx;
        }
        var qPair = partners ? tensor(PartnerRows(H)) : null; var kPair = partners ? tensor(PartnerRows(KvH)) : null;
        var an = lw.AttnNorm.unsqueeze(0);
        var wq = lw.Wq * an * qScale; var wk = lw.Wk * an; var wv = lw.Wv * an;
        var wqkv = partners ? cat([wq, wk, wq.index_select(0, qPair!), wk.index_select(0, kPair!), wv], 0) : cat([wq, wk, wv], 0);
        Tensor? b = null;
        if (Config.QkvBias)
        {
            if (lw.Bq is null || lw.Bk is null || lw.Bv is null) throw new InvalidDataException($"layer {layer}: qkv bias expected (qwen2) but missing");
            var bq = lw.Bq * qScale;
            b = partners ? cat([bq, lw.Bk, bq.index_select(0, qPair!), lw.Bk.index_select(0, kPair!), lw.Bv], 0) : cat([bq, lw.Bk, lw.Bv], 0);
        }
        var fn = lw.FfnNorm.unsqueeze(0);
        return (wqkv.t(), b, lw.Wo.t(), cat([lw.W1 * fn, lw.W3 * fn], 0).t(), lw.W2.t());
    }

    // The backend's kernels. Sizes are passed, not read from the tensors: TorchSharp's `shape` costs ~1 µs per read
    // (measured), ~5 % of a step at these sizes.

    /// <summary>The embedding rows of the tokens, [T, D].</summary>
    protected abstract Tensor Embed(ReadOnlySpan<int> tokens);
    /// <summary>RMSNorm of the n rows of x [n, D], times <paramref name="weight"/> if given (the layers' weights are folded into the next product).</summary>
    protected abstract Tensor Norm(Tensor x, int n, Tensor? weight = null);
    /// <summary>The fused projection of the normed rows h [n, D] (bias included): [n, Q + 2K] or [n, 2(Q+K) + K], see <see cref="Fold"/>.</summary>
    protected abstract Tensor Qkv(int layer, Tensor h, int n);
    /// <summary>The rotary partners of the q | k heads a [n, H+kvH, hd] of the projection qkv.</summary>
    protected abstract Tensor Partners(Tensor qkv, Tensor a, int n);
    /// <summary>Where v starts in a row of the projection.</summary>
    protected abstract int VOffset { get; }
    /// <summary>residual + attn · Wo, attn [n, Q] → [n, D].</summary>
    protected abstract Tensor Out(int layer, Tensor attn, int n, Tensor residual);
    /// <summary>h · W13, h [n, D] → gate | up [n, 2·Hff].</summary>
    protected abstract Tensor GateUp(int layer, Tensor h, int n);
    /// <summary>silu(gate) ⊙ up, gu [n, 2·Hff] → [n, Hff].</summary>
    protected abstract Tensor SwiGlu(Tensor gu, int n);
    /// <summary>residual + act · W2, act [n, Hff] → [n, D].</summary>
    protected abstract Tensor Down(int layer, Tensor act, int n, Tensor residual);
    /// <summary>hidden [n, D] → logits [n, V] through the LM head (inference).</summary>
    protected abstract Tensor HeadLogits(Tensor hidden, int n);

    public abstract Tensor Logits(Tensor hidden);

    public virtual ForwardOutput Forward(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, bool[]? allowed, bool lastLogitsOnly)
    {
        int start = cache.Advance(tokens.Length);
        return ForwardTensors(cache, tokens, positions, start, allowed, lastLogitsOnly);
    }

    /// <summary>
    /// The tensor forward of one sequence whose slots [start, start + T) are already reserved. Attention is plain ops
    /// (scores with the additive mask in one baddbmm, softmax, weighted sum) instead of SDPA, with or without a mask:
    /// SDPA's math path re-checks a mask for fully masked rows in every layer, and even unmasked one-token steps were
    /// 20-30 % slower through SDPA than explicit ops (docs/benchmarks.md, profiling log).
    /// </summary>
    protected ForwardOutput ForwardTensors(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, int start, bool[]? allowed, bool lastLogitsOnly)
    {
        int T = tokens.Length, S = start + T;
        using var scope = NewDisposeScope();
        using var _ = inference_mode();   // skips autograd and version-counter bookkeeping: fewer µs per op than no_grad
        var posArr = new long[T];
        for (int i = 0; i < T; i++) posArr[i] = positions[i];
        var x = Embed(tokens);                                                         // [T, D]
        var pos = tensor(posArr, device: Device);
        var cos = Rope.Cos.index_select(0, pos).unsqueeze(1);                          // [T, 1, hd]
        var sin = Rope.SinSigned.index_select(0, pos).unsqueeze(1);
        // The additive mask [G*T, S] (rows ordered (group, t) like the stacked queries below), built in C# and uploaded
        // as one tensor: converting and repeating a bool mask with tensor ops cost four ops per forward.
        Tensor? m = null;
        if (allowed is not null) m = AdditiveMask(allowed, T, S);
        else if (T > 1 || (Config.SlidingWindow is { } w0 && S > w0)) m = AdditiveMask(CausalAllowed(T, start), T, S);
        Tensor? slots = null;     // the cache slots written

        for (int l = 0; l < Config.Layers; l++)
        {
            var (k, v, q) = Project(l, x, cos, sin, 1, T);                            // k, v: [T, kvH, hd]; q: [T, H, hd] (views)
            slots ??= T == 1 ? tensor(new long[] { start }, device: Device) : arange(start, S, dtype: ScalarType.Int64, device: Device);
            cache.K[l].index_copy_(2, slots, k.permute(1, 2, 0));                     // cache layer: [kvH, hd, capacity]
            cache.V[l].index_copy_(2, slots, v.permute(1, 2, 0));
            var kT = cache.K[l].narrow(2, 0, S);                                       // [kvH, hd, S], a view: keys transposed
            var vv = cache.V[l].narrow(2, 0, S).transpose(1, 2);                       // [kvH, S, hd], a strided view
            // GQA: the G query heads sharing a kv head are stacked along the query axis, [kvH, G*T, hd].
            // One token needs no permutation at all (the common case of plain decoding): 4 fewer ops per layer.
            var qq = T == 1 ? q.view(KvH, G, Hd) : q.view(T, KvH, G, Hd).permute(1, 2, 0, 3).reshape(KvH, G * T, Hd);
            var scores = m is null ? qq.bmm(kT) : TorchOps.MaskedScores(m, qq, kT);   // [kvH, G*T, S], q pre-scaled
            var o = scores.softmax(-1).bmm(vv);                                        // [kvH, G*T, hd]
            var oo = T == 1 ? o.reshape(1, Q) : o.view(KvH, G, T, Hd).permute(2, 0, 1, 3).reshape(T, Q);
            x = Mlp(l, x, oo, T);
        }
        var hidden = Norm(x, T, FinalNorm);                                            // [T, D]
        var logits = lastLogitsOnly ? HeadLogits(hidden.narrow(0, T - 1, 1), 1) : HeadLogits(hidden, T);   // [T or 1, V]
        return new ForwardOutput(logits.MoveToOuterDisposeScope(), hidden.MoveToOuterDisposeScope());
    }

    /// <summary>Each sequence through <see cref="Forward"/> (its tree's mask from its parents), the outputs concatenated.</summary>
    public virtual ForwardOutput ForwardBatch(IReadOnlyList<SequenceRows> sequences)
    {
        int B = sequences.Count;
        if (B == 1) return ForwardRows(sequences[0]);
        var parts = new ForwardOutput[B];
        try
        {
            for (int b = 0; b < B; b++) parts[b] = ForwardRows(sequences[b]);
            using var scope = NewDisposeScope();
            return new ForwardOutput(cat(parts.Select(p => p.Logits).ToArray(), 0).MoveToOuterDisposeScope(),
                cat(parts.Select(p => p.Hidden).ToArray(), 0).MoveToOuterDisposeScope());
        }
        finally { foreach (var p in parts) p.Dispose(); }   // (a default output, of a forward that never ran, disposes nothing)
    }

    ForwardOutput ForwardRows(SequenceRows sq) =>
        Forward(sq.Cache, sq.Tokens, sq.Positions, sq.IsTree ? TreeAllowed(sq.TreeParents, sq.Cache.Length) : null, lastLogitsOnly: false);

    public Tensor HiddenStates(Tensor tokens)
    {
        int B = (int)tokens.shape[0], T = (int)tokens.shape[1];
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var x = Embedding.index_select(0, tokens.reshape(-1).to(Device));               // [B*T, D]
        var cos = Rope.Cos.narrow(0, 0, T).repeat(B, 1).unsqueeze(1);                  // [B*T, 1, hd]
        var sin = Rope.SinSigned.narrow(0, 0, T).repeat(B, 1).unsqueeze(1);
        var m = AdditiveMask(CausalAllowed(T, 0), T, T);                               // [G*T, T]
        for (int l = 0; l < Config.Layers; l++)
        {
            var (k, v, q) = Project(l, x, cos, sin, B, T);
            var kk = k.view(B, T, KvH, Hd).permute(0, 2, 1, 3);                        // [B, kvH, T, hd]
            var vv = v.view(B, T, KvH, Hd).permute(0, 2, 1, 3);
            x = Mlp(l, x, Attend(q, kk, vv, m, B, T), B * T);
        }
        return Norm(x, B * T, FinalNorm).view(B, T, -1).MoveToOuterDisposeScope();
    }

    /// <returns>k, v: [n, kvH, hd]; q: [n, H, hd] (views of the projection and of the rotated q|k).</returns>
    (Tensor k, Tensor v, Tensor q) Project(int layer, Tensor x, Tensor cos, Tensor sin, int B, int T)
    {
        int n = B * T, qk = Q + Kv;
        var qkv = Qkv(layer, Norm(x, n), n);
        var a = qkv.narrow(1, 0, qk).view(n, H + KvH, Hd);
        var r = addcmul(a * cos, Partners(qkv, a, n), sin, OneS);                      // rotary, [n, H+kvH, hd]
        var q = r.narrow(1, 0, H);                                                     // [n, H, hd]
        var k = r.narrow(1, H, KvH);                                                   // [n, kvH, hd]
        var v = qkv.narrow(1, VOffset, Kv).view(n, KvH, Hd);
        return (k, v, q);
    }

    /// <summary>Batched GQA attention (no cache): q [B*T, H, hd] (pre-scaled), kk/vv [B, kvH, S, hd], additive mask [G*T, S] → [B*T, Q].</summary>
    Tensor Attend(Tensor q, Tensor kk, Tensor vv, Tensor mask, int B, int T)
    {
        // Explicit attention (not SDPA): q already carries 1/sqrt(hd), which TorchSharp's SDPA cannot be told.
        var qq = q.view(B, T, KvH, G, Hd).permute(0, 2, 3, 1, 4).reshape(B, KvH, G * T, Hd);
        var o = matmul(qq, kk.transpose(-2, -1)).add_(mask, OneS).softmax(-1).matmul(vv);   // [B, kvH, G*T, hd]
        return o.view(B, KvH, G, T, Hd).permute(0, 3, 1, 2, 4).reshape(B * T, Q);
    }

    /// <summary>Output projection with the residual, then the SwiGLU MLP with the residual. x: [n, D], oo: [n, Q].</summary>
    Tensor Mlp(int layer, Tensor x, Tensor oo, int n)
    {
        x = Out(layer, oo, n, x);                                                      // residual + Wo·attn
        var gu = GateUp(layer, Norm(x, n), n);                                         // [n, 2*Hff]
        return Down(layer, SwiGlu(gu, n), n, x);                                       // residual + W2·act
    }

    /// <summary>[T, start+T] bool: row i (slot start+i) sees slots ≤ start+i within the sliding window.</summary>
    protected bool[] CausalAllowed(int T, int start)
    {
        int S = start + T;
        var data = new bool[T * S];
        int window = Config.SlidingWindow ?? int.MaxValue;
        for (int i = 0; i < T; i++)
            for (int j = 0; j <= start + i; j++)
                data[i * S + j] = (start + i) - j < window;
        return data;
    }

    /// <summary>
    /// [T, start+T] bool for a tree of T new rows: every row sees the committed slots [0, start) and the slots of its
    /// ancestors and itself (the tree attention mask; DraftTree.Mask builds the same).
    /// </summary>
    protected static bool[] TreeAllowed(ReadOnlySpan<int> parents, int start)
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

    /// <summary>An additive float mask [G*T, S] (0 = may attend, -inf = masked), the T rows repeated for each of the G query heads of a kv head.</summary>
    Tensor AdditiveMask(ReadOnlySpan<bool> allowed, int T, int S)
    {
        var data = new float[G * T * S];
        for (int r = 0; r < T * S; r++) if (!allowed[r]) data[r] = float.NegativeInfinity;
        for (int g = 1; g < G; g++) Array.Copy(data, 0, data, g * T * S, T * S);
        return tensor(data, [G * T, S], device: Device);
    }

    public virtual void Dispose()
    {
        Rope.Dispose(); EpsS.Dispose(); OneS.Dispose();
    }
}
