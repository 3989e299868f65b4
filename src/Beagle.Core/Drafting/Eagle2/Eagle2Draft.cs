using Beagle.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Beagle.Drafting;

/// <summary>
/// The EAGLE-2 baseline draft (docs/method.md, "EAGLE-2 baseline"):
/// <code>
/// x_j    = fc(concat(e(t_{j+1}), f_j))                     fc: Linear(2D → D, bias)
/// a_j    = x_j + Wo · SelfAttn(x_{≤j})                      no input norm, RoPE at position j
/// fhat_j = a_j + SwiGLU(RMSNorm_post(a_j))                  no final norm → target LM head → t_{j+2}
/// </code>
/// Entry j pairs the token at j+1 with the feature at j and sits at rotary position j (as in EAGLE's code).
/// Parameters: fc [D, 2D] + bias; wqkv [(H+2kvH)*hd, D] (q | k | v); wo [D, H*hd]; post_norm [D]; w13 [2F, D]; w2 [D, F].
/// </summary>
public sealed class Eagle2Draft : DraftModelBase
{
    readonly Linear _fc, _wqkv, _wo, _w13, _w2;
    readonly Parameter _postNorm;

    public Eagle2Draft(DraftConfig config, LlamaModel target) : base("Eagle2Draft", config, target)
    {
        if (config.Architecture != DraftConfig.Eagle2) throw new ArgumentException($"config is for '{config.Architecture}', not '{DraftConfig.Eagle2}'", nameof(config));
        int d = config.Dim;
        _fc = nn.Linear(2 * d, d, hasBias: true, device: Dev);
        _wqkv = nn.Linear(d, config.QDim + 2 * config.KvDim, hasBias: false, device: Dev);
        _wo = nn.Linear(config.QDim, d, hasBias: false, device: Dev);
        _postNorm = new Parameter(ones(d, device: Dev));
        _w13 = nn.Linear(d, 2 * config.HiddenDim, hasBias: false, device: Dev);
        _w2 = nn.Linear(config.HiddenDim, d, hasBias: false, device: Dev);
        register_module("fc", _fc);
        register_module("wqkv", _wqkv);
        register_module("wo", _wo);
        register_parameter("post_norm", _postNorm);
        register_module("w13", _w13);
        register_module("w2", _w2);
    }

    /// <summary>
    /// Training forward, batched, no cache.
    /// </summary>
    /// <param name="nextTokens">[B, T] int64: t_{j+1} for entry j.</param>
    /// <param name="features">[B, T, D]: f_j (true features or, when unrolled, draft features).</param>
    /// <param name="positions">[T] int64 rotary positions j.</param>
    /// <param name="mask">[T, T] or [B, T, T] bool, true = attend (causal, diagonal included, for plain EAGLE-2).</param>
    /// <returns>fhat [B, T, D].</returns>
    public Tensor ForwardStates(Tensor nextTokens, Tensor features, Tensor positions, Tensor mask)
    {
        using var scope = NewDisposeScope();
        var (o, _, _) = Step(nextTokens, features, positions, null, null, mask);
        return o.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One unrolled training-time-test step: the new entries attend the past keys/values plus themselves.
    /// Keys and values grow by concatenation per step (that growth is what the memory comparison measures).
    /// </summary>
    /// <param name="nextTokens">[B, T] int64.</param>
    /// <param name="features">[B, T, D].</param>
    /// <param name="positions">[T] int64.</param>
    /// <param name="pastKeys">[B, kvH, P, hd] rotated keys of earlier steps, or null.</param>
    /// <param name="pastValues">[B, kvH, P, hd], or null.</param>
    /// <param name="mask">[T, P+T] or [B, T, P+T] bool, true = attend.</param>
    /// <returns>output fhat [B, T, D]; keys and values [B, kvH, P+T, hd] (past then new).</returns>
    public (Tensor output, Tensor keys, Tensor values) ForwardStep(Tensor nextTokens, Tensor features, Tensor positions,
        Tensor? pastKeys, Tensor? pastValues, Tensor mask)
    {
        using var scope = NewDisposeScope();
        var (o, k, v) = Step(nextTokens, features, positions, pastKeys, pastValues, mask);
        return (o.MoveToOuterDisposeScope(), k.MoveToOuterDisposeScope(), v.MoveToOuterDisposeScope());
    }

    (Tensor output, Tensor keys, Tensor values) Step(Tensor nextTokens, Tensor features, Tensor positions, Tensor? pastKeys, Tensor? pastValues, Tensor mask)
    {
        if (nextTokens.dim() != 2) throw new ArgumentException("nextTokens must be [B, T]", nameof(nextTokens));
        long B = nextTokens.shape[0], T = nextTokens.shape[1];
        if (features.dim() != 3 || features.shape[0] != B || features.shape[1] != T || features.shape[2] != Config.Dim)
            throw new ArgumentException($"features must be [{B}, {T}, {Config.Dim}], got [{string.Join(", ", features.shape)}]", nameof(features));
        if (positions.numel() != T) throw new ArgumentException($"need {T} positions", nameof(positions));
        if ((pastKeys is null) != (pastValues is null)) throw new ArgumentException("pass both past keys and values, or neither");
        int H = Config.Heads, kvH = Config.KvHeads, hd = Config.HeadDim, qd = Config.QDim, kv = Config.KvDim;
        var x = _fc.forward(cat([Embed(nextTokens), features.to(Dev)], -1));             // [B, T, D]
        var qkv = _wqkv.forward(x);                                                       // [B, T, Q + 2K]
        var q = ApplyRope(qkv.narrow(-1, 0, qd).view(B, T, H, hd), positions);          // [B, T, H, hd]
        var k = ApplyRope(qkv.narrow(-1, qd, kv).view(B, T, kvH, hd), positions).permute(0, 2, 1, 3);   // [B, kvH, T, hd]
        var v = qkv.narrow(-1, qd + kv, kv).view(B, T, kvH, hd).permute(0, 2, 1, 3);
        if (pastKeys is not null) { k = cat([pastKeys, k], 2); v = cat([pastValues!, v], 2); }      // [B, kvH, P+T, hd]
        var a = x.add(_wo.forward(Attend(q, k, v, mask)), TorchScalars.One);                                // [B, T, D]
        var gu = _w13.forward(RmsNorm(a, _postNorm));                                     // [B, T, 2F]
        int f = Config.HiddenDim;
        var o = a.add(_w2.forward(F.silu(gu.narrow(-1, 0, f)) * gu.narrow(-1, f, f)), TorchScalars.One);     // [B, T, D]
        return (o, k, v);
    }

    public override IDraftSession StartSession(int capacity)
    {
        if (!UseManagedKernel(Target.Embedding.shape[0] * (long)Config.Dim * 4 <= 256L << 20)) return new Eagle2TensorSession(this, capacity);
        return new ManagedEagle2Session(Config, capacity, SessionWeights(() =>
        {
            using var w = Fold();
            return new ManagedEagle2Weights(HostWeights(w.WoT, w.W13T, w.W2T),
                WfcT: Kernels.ManagedWeights.Host(w.WfcT), Bfc: Kernels.ManagedWeights.Host(w.Bfc), WqkvT: Kernels.ManagedWeights.Host(w.WqkvT));
        }));
    }

    /// <summary>The inference weights: post_norm folded into the MLP, rotary partners fused (see <see cref="Eagle2FoldedWeights"/>).</summary>
    internal Eagle2FoldedWeights Fold()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Tensor Keep(Tensor t) => t.detach().contiguous().DetachFromDisposeScope();
        int qd = Config.QDim, kv = Config.KvDim;
        var w = _wqkv.weight!;
        var wq = w.narrow(0, 0, qd); var wk = w.narrow(0, qd, kv); var wv = w.narrow(0, qd + kv, kv);
        return new Eagle2FoldedWeights
        {
            WfcT = Keep(_fc.weight!.t()),
            Bfc = Keep(_fc.bias!),
            WqkvT = Keep(cat([wq, wk, wq.index_select(0, PartnerRows(Config.Heads)), wk.index_select(0, PartnerRows(Config.KvHeads)), wv], 0).t()),
            WoT = Keep(_wo.weight!.t()),
            W13T = Keep((_w13.weight! * _postNorm.unsqueeze(0)).t()),
            W2T = Keep(_w2.weight!.t()),
        };
    }
}
