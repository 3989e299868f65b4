using Beagle.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Beagle.Drafting;

/// <summary>
/// The Beagle draft (docs/method.md, "The draft"): one cross-attention block, nothing else.
/// <code>
/// y_i    = CrossAttn(q = RMSNorm_q(e(t_i)) at position i, kv = RMSNorm_kv(h_j) at positions j &lt; i) + e(t_i)
/// hhat_i = SwiGLU(RMSNorm_m(y_i)) + y_i          → target LM head → distribution of t_{i+1}
/// </code>
/// The mask is strictly causal, diagonal included: query i never sees h_i (h_i already encodes t_{i+1}).
/// Embedding and LM head are the target's (frozen, shared, not saved). Parameters (safetensors names):
/// q_norm, kv_norm, mlp_norm [D]; wq [H*hd, D]; wkv [2*kvH*hd, D] (k | v); wo [D, H*hd]; w13 [2*F, D] (gate | up); w2 [D, F].
/// </summary>
public sealed class BeagleDraft : DraftModelBase
{
    readonly Parameter _qNorm, _kvNorm, _mlpNorm;
    readonly Linear _wq, _wkv, _wo, _w13, _w2;

    public BeagleDraft(DraftConfig config, LlamaModel target) : base("BeagleDraft", config, target)
    {
        if (config.Architecture != DraftConfig.Beagle) throw new ArgumentException($"config is for '{config.Architecture}', not '{DraftConfig.Beagle}'", nameof(config));
        int d = config.Dim;
        _qNorm = new Parameter(ones(d, device: Dev));
        _kvNorm = new Parameter(ones(d, device: Dev));
        _mlpNorm = new Parameter(ones(d, device: Dev));
        _wq = nn.Linear(d, config.QDim, hasBias: false, device: Dev);
        _wkv = nn.Linear(d, 2 * config.KvDim, hasBias: false, device: Dev);
        _wo = nn.Linear(config.QDim, d, hasBias: false, device: Dev);
        _w13 = nn.Linear(d, 2 * config.HiddenDim, hasBias: false, device: Dev);
        _w2 = nn.Linear(config.HiddenDim, d, hasBias: false, device: Dev);
        register_parameter("q_norm", _qNorm);
        register_parameter("kv_norm", _kvNorm);
        register_parameter("mlp_norm", _mlpNorm);
        register_module("wq", _wq);
        register_module("wkv", _wkv);
        register_module("wo", _wo);
        register_module("w13", _w13);
        register_module("w2", _w2);
    }

    /// <summary>
    /// Training forward, batched, no cache.
    /// </summary>
    /// <param name="queryTokens">[B, T] int64: the tokens whose embeddings are the queries.</param>
    /// <param name="keyStates">[B, S, D]: true and/or draft states used as keys and values.</param>
    /// <param name="queryPositions">[T] int64 rotary positions of the queries.</param>
    /// <param name="keyPositions">[S] int64 rotary positions of the keys.</param>
    /// <param name="mask">[T, S] or [B, T, S] bool, true = attend. A row with no visible key gets zero attention
    /// output (hhat = MLP block over e(t) alone), never NaN.</param>
    /// <returns>hhat [B, T, D].</returns>
    public Tensor ForwardStates(Tensor queryTokens, Tensor keyStates, Tensor queryPositions, Tensor keyPositions, Tensor mask)
    {
        if (queryTokens.dim() != 2) throw new ArgumentException("queryTokens must be [B, T]", nameof(queryTokens));
        if (keyStates.dim() != 3 || keyStates.shape[0] != queryTokens.shape[0] || keyStates.shape[2] != Config.Dim)
            throw new ArgumentException($"keyStates must be [B, S, {Config.Dim}], got [{string.Join(", ", keyStates.shape)}]", nameof(keyStates));
        long B = queryTokens.shape[0], T = queryTokens.shape[1], S = keyStates.shape[1];
        if (queryPositions.numel() != T || keyPositions.numel() != S) throw new ArgumentException($"need {T} query and {S} key positions");
        int H = Config.Heads, kvH = Config.KvHeads, hd = Config.HeadDim, kv = Config.KvDim;
        using var scope = NewDisposeScope();
        var x = Embed(queryTokens);                                                      // [B, T, D]
        var q = ApplyRope(_wq.forward(RmsNorm(x, _qNorm)).view(B, T, H, hd), queryPositions);        // [B, T, H, hd]
        var kvp = _wkv.forward(RmsNorm(keyStates.to(Dev), _kvNorm));                    // [B, S, 2*kv]
        var k = ApplyRope(kvp.narrow(-1, 0, kv).view(B, S, kvH, hd), keyPositions).permute(0, 2, 1, 3);   // [B, kvH, S, hd]
        var v = kvp.narrow(-1, kv, kv).view(B, S, kvH, hd).permute(0, 2, 1, 3);         // [B, kvH, S, hd]
        var y = x.add(_wo.forward(Attend(q, k, v, mask)), TorchScalars.One);                                // [B, T, D]
        var gu = _w13.forward(RmsNorm(y, _mlpNorm));                                      // [B, T, 2F]
        int f = Config.HiddenDim;
        var hhat = y.add(_w2.forward(F.silu(gu.narrow(-1, 0, f)) * gu.narrow(-1, f, f)), TorchScalars.One);  // [B, T, D]
        return hhat.MoveToOuterDisposeScope();
    }

    /// <summary>Strictly causal mask [T, S] for queries at positions qPos and keys at kPos: true where kPos &lt; qPos.</summary>
    public static Tensor StrictlyCausalMask(Tensor queryPositions, Tensor keyPositions) =>
        keyPositions.unsqueeze(0).lt(queryPositions.unsqueeze(1));

    public override IDraftSession StartSession(int capacity)
    {
        long vocab = Target.Embedding.shape[0];
        if (!UseManagedKernel(vocab * 2L * Config.QDim * 4 <= QueryTableMaxBytes)) return new BeagleTensorSession(this, capacity);
        return new ManagedBeagleSession(Config, capacity, SessionWeights(() =>
        {
            using var w = Fold();
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var table = RmsNormNoWeight(Target.Embedding).mm(w.WqT);                      // [V, 2Q]
            return new ManagedBeagleWeights(HostWeights(w.WoT, w.W13T, w.W2T), QTable: Kernels.ManagedWeights.Host(table), WkvT: Kernels.ManagedWeights.Host(w.WkvT));
        }));
    }

    /// <summary>Largest query table a session precomputes (32 MB: a 32k vocabulary at 2Q = 256).</summary>
    internal const long QueryTableMaxBytes = 32L << 20;

    /// <summary>The inference weights: norm weights folded into the matmuls, rotary partners fused (see <see cref="BeagleFoldedWeights"/>).</summary>
    internal BeagleFoldedWeights Fold()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Tensor Keep(Tensor t) => t.detach().contiguous().DetachFromDisposeScope();
        int kv = Config.KvDim;
        var wq = _wq.weight! * _qNorm.unsqueeze(0);                                         // [Q, D]
        var wkv = _wkv.weight! * _kvNorm.unsqueeze(0);                                      // [2K, D]
        var wk = wkv.narrow(0, 0, kv); var wv = wkv.narrow(0, kv, kv);
        return new BeagleFoldedWeights
        {
            WqT = Keep(cat([wq, wq.index_select(0, PartnerRows(Config.Heads))], 0).t()),
            WkvT = Keep(cat([wk, wk.index_select(0, PartnerRows(Config.KvHeads)), wv], 0).t()),
            WoT = Keep(_wo.weight!.t()),
            W13T = Keep((_w13.weight! * _mlpNorm.unsqueeze(0)).t()),
            W2T = Keep(_w2.weight!.t()),
            QueryTable = null,
        };
    }
}
