using Beagle.Compute;
using Beagle.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Beagle.Drafting;

/// <summary>
/// What Beagle and EAGLE-2 drafts share: the config, the target's frozen embedding and LM head (references held
/// outside the module's registered parameters and buffers, so they are neither trained nor saved), rotary tables,
/// RMSNorm and grouped-query attention with a guard for fully masked rows.
/// </summary>
public abstract class DraftModelBase : nn.Module, IDraftModel
{
    /// <summary>
    /// The target tensors a draft reads. Kept in a plain class (not a Tensor field) so that TorchSharp never registers
    /// them as parameters or buffers of the draft: they stay the target's, frozen and shared.
    /// </summary>
    protected sealed class TargetTensors
    {
        /// <summary>[V, D], the target's embedding (not owned).</summary>
        public required Tensor Embedding { get; init; }
        /// <summary>[Vd, D]: the target's LM head (not owned) or, with a reduced vocabulary, its mapped rows (owned).</summary>
        public required Tensor LmHead { get; init; }
        public bool OwnsLmHead { get; init; }
    }

    readonly TargetTensors _target;
    readonly RotaryTables _rope;
    readonly Tensor _pair;        // [hd] int64 rotary partner index

    /// <summary>Scalars held for the draft's lifetime (see TensorTargetForward: implicit Scalars can be finalised mid-call).</summary>
    protected internal Scalar EpsScalar { get; }
    protected internal Scalar OneScalar { get; }

    /// <summary>Number of draft states one round may hold (tree nodes expanded per round).</summary>
    public const int MaxRoundNodes = 512;

    public DraftConfig Config { get; }
    public LlamaModel Target { get; }
    public string Architecture => Config.Architecture;
    public int DraftVocabSize { get; }
    public IReadOnlyList<int>? DraftToTarget => Config.DraftVocab;

    protected DraftModelBase(string name, DraftConfig config, LlamaModel target) : base(name)
    {
        Config = config.Validate();
        EpsScalar = config.NormEps.ToScalar();
        OneScalar = 1.0.ToScalar();
        config.CheckAgainst(target.Config);
        Target = target;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Tensor lmHead = target.LmHeadWeight;
        if (config.DraftVocab is { } dv)
            lmHead = target.LmHeadWeight.index_select(0, tensor(dv.Select(i => (long)i).ToArray(), device: target.Device))
                .contiguous().DetachFromDisposeScope();
        _target = new TargetTensors { Embedding = target.Embedding, LmHead = lmHead, OwnsLmHead = config.DraftVocab is not null };
        DraftVocabSize = (int)lmHead.shape[0];
        // The draft's own rotary tables (interleaved pairs; the layout is a convention of the draft's own weights).
        _rope = new RotaryTables(config.HeadDim, config.MaxPositions, config.RopeTheta, RopeLayout.Interleaved, null, target.Device);
        _rope.Cos.DetachFromDisposeScope(); _rope.SinSigned.DetachFromDisposeScope();   // built inside this scope: keep them alive
        _pair = tensor(_rope.Pair, device: target.Device).DetachFromDisposeScope();
        // RotaryTables detaches its own tensors from the scope.
    }

    public abstract IDraftSession StartSession(int capacity);

    /// <summary>Bytes of a tensor's elements.</summary>
    internal static long TensorBytes(Tensor? t) => t is null ? 0 : t.NumberOfElements * t.ElementSize;

    /// <summary>
    /// Own parameters and buffers, the rotary tables, a reduced-vocabulary LM head (its own rows) and the session
    /// copies built so far: the managed kernel's host weights (including host copies of the target's embedding and LM
    /// head), the packed matrices and a packed reduced head.
    /// </summary>
    public long WeightBytes
    {
        get
        {
            long bytes = parameters().Sum(p => TensorBytes(p)) + buffers().Sum(b => TensorBytes(b));
            bytes += TensorBytes(_rope.Cos) + TensorBytes(_rope.SinSigned) + TensorBytes(_pair);
            if (_target.OwnsLmHead) bytes += TensorBytes(_target.LmHead);
            lock (_sessionWeightsLock)
            {
                bytes += (_sessionWeights?.Bytes ?? 0) + (_packedSession?.Bytes ?? 0);
                if (_packedLmHead is { } head) bytes += sizeof(float) * head.PackedFloats;
            }
            return bytes;
        }
    }

    Kernels.ISessionWeights? _sessionWeights;
    readonly object _sessionWeightsLock = new();

    /// <summary>
    /// The managed kernel's host copy of the (folded) weights, built on first use and shared by every session until
    /// <see cref="InvalidateSessionWeights"/>. Sessions started after the weights change must not see a stale copy: the
    /// trainer invalidates after every optimiser step; anything else that writes the weights must do the same.
    /// </summary>
    internal T SessionWeights<T>(Func<T> build) where T : class, Kernels.ISessionWeights
    {
        lock (_sessionWeightsLock) return (T)(_sessionWeights ??= build());
    }

    /// <summary>Forgets the sessions' copies of the weights (call after changing them); sessions already running keep theirs.</summary>
    public void InvalidateSessionWeights() { lock (_sessionWeightsLock) { _sessionWeights = null; _packedSession = null; } }

    Kernels.ISessionWeights? _packedSession;

    /// <summary>
    /// On the CPU, the tensor session's matrices packed (<see cref="PackedMatrix"/>: MKL re-packs a weight on
    /// every product of more than one row, and its one-row products are slower), built once per draft and shared like
    /// <see cref="SessionWeights"/> (same invalidation); null on other devices.
    /// </summary>
    internal T? PackedSessionWeights<T>(Func<T> build) where T : class, Kernels.ISessionWeights
    {
        if (Dev.type != DeviceType.CPU) return null;
        lock (_sessionWeightsLock) return (T)(_packedSession ??= build());
    }

    /// <summary>Packs a folded, transposed weight W [K, N] for <see cref="PackedSessionWeights"/>.</summary>
    internal static PackedMatrix Pack(Tensor wT) => PackedMatrix.FromTensor(wT);

    /// <summary>The parts of the managed kernel's weights every architecture on <see cref="Kernels.ManagedSessionBase"/> shares.</summary>
    internal Kernels.ManagedWeights HostWeights(Tensor woT, Tensor w13T, Tensor w2T) => new()
    {
        Emb = Kernels.ManagedWeights.Host(Target.Embedding), WoT = Kernels.ManagedWeights.Host(woT), W13T = Kernels.ManagedWeights.Host(w13T),
        W2T = Kernels.ManagedWeights.Host(w2T), Lm = Kernels.ManagedWeights.Host(LmHead), Cos = Kernels.ManagedWeights.Host(Rope.Cos),
        Sin = Kernels.ManagedWeights.Host(Rope.SinSigned), LmRows = (int)LmHead.shape[0],
    };

    /// <summary>Session implementation (see <see cref="Kernels.DraftKernel"/>); Auto picks the managed kernel for small CPU drafts.</summary>
    public Kernels.DraftKernel Kernel { get; set; } = Kernels.DraftKernel.Auto;

    /// <summary>Weights a draft step reads, up to which Auto picks the managed kernel (see UseManagedKernel).</summary>
    const long ManagedStepWeights = 1L << 20;

    /// <summary>
    /// Whether a new session runs on the managed kernel: forced by <see cref="Kernel"/> (or BEAGLE_DRAFT_KERNEL when
    /// Auto), else for a small draft (a step reads at most <see cref="ManagedStepWeights"/> weights, and
    /// <paramref name="smallEnough"/>) on the CPU.
    /// </summary>
    protected internal bool UseManagedKernel(bool smallEnough)
    {
        var kernel = Kernel;
        if (kernel == Kernels.DraftKernel.Auto)
            kernel = Environment.GetEnvironmentVariable("BEAGLE_DRAFT_KERNEL")?.ToLowerInvariant() switch
            {
                "torch" => Kernels.DraftKernel.Torch,
                "managed" => Kernels.DraftKernel.Managed,
                _ => Kernels.DraftKernel.Auto,
            };
        bool cpu = Dev.type == DeviceType.CPU;
        if (kernel == Kernels.DraftKernel.Managed && !cpu) throw new NotSupportedException("the managed draft kernel runs on the CPU only");
        // Auto: the managed kernel where a step's ~50 tensor ops would cost more than its arithmetic — drafts whose
        // step reads at most ~1M weights (stories260K's: 82K). Larger drafts use the tensor session, whose products go
        // through the packed, threaded kernels: a 110M-sized EAGLE-2 step took 6.4 ms managed and 3.3 ms that way.
        long stepWeights = (long)Config.Dim * (4L * Config.Dim + 3L * Config.HiddenDim + DraftVocabSize);
        return kernel == Kernels.DraftKernel.Managed || (kernel == Kernels.DraftKernel.Auto && cpu && stepWeights <= ManagedStepWeights && smallEnough);
    }

    /// <summary>The checks every session's Commit makes: no open round, hidden [m, dim], room for m more positions.</summary>
    internal static void CheckCommit(int roundNodes, Tensor hidden, int m, int dim, int length, int capacity)
    {
        if (hidden.dim() != 2 || hidden.shape[0] != m || hidden.shape[1] != dim)
            throw new ArgumentException($"hidden must be [{m}, {dim}], got [{string.Join(", ", hidden.shape)}]", nameof(hidden));
        CheckCommit(roundNodes, m, length, capacity);
    }

    /// <summary>The same checks for hidden states given as a plain [m * dim] array.</summary>
    internal static void CheckCommit(int roundNodes, int hiddenLength, int m, int dim, int length, int capacity)
    {
        if (hiddenLength != m * dim)
            throw new ArgumentException($"hidden must hold {m} x {dim} = {m * dim} values, got {hiddenLength}", "hidden");
        CheckCommit(roundNodes, m, length, capacity);
    }

    static void CheckCommit(int roundNodes, int m, int length, int capacity)
    {
        if (roundNodes > 0) throw new InvalidOperationException("call EndRound before Commit");
        if (length + m > capacity) throw new InvalidOperationException($"sequence of {length + m} positions exceeds the session capacity {capacity}");
    }

    protected internal Device Dev => Target.Device;
    protected internal RotaryTables Rope => _rope;
    /// <summary>[Vd, D] LM-head rows of the draft vocabulary.</summary>
    protected internal Tensor LmHead => _target.LmHead;

    /// <summary>Target embedding of tokens [...] int64 → [..., D] (frozen: no gradient reaches the target).</summary>
    protected Tensor Embed(Tensor tokens)
    {
        var flat = tokens.reshape(-1).to(int64).to(Dev);
        var shape = tokens.shape.Append(Config.Dim).ToArray();
        return _target.Embedding.index_select(0, flat).view(shape);
    }

    /// <summary>Embedding rows [N, D] for token ids (inference path).</summary>
    protected internal Tensor Embed(ReadOnlySpan<int> tokens)
    {
        var ids = new long[tokens.Length];
        int v = (int)_target.Embedding.shape[0];
        for (int i = 0; i < ids.Length; i++)
        {
            if ((uint)tokens[i] >= (uint)v) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} is outside the vocabulary (size {v})");
            ids[i] = tokens[i];
        }
        return _target.Embedding.index_select(0, tensor(ids, device: Dev));
    }

    /// <summary>Draft logits through the target's frozen LM head: states [..., D] → [..., DraftVocabSize].</summary>
    public Tensor Logits(Tensor states) => F.linear(states, _target.LmHead);

    PackedMatrix? _packedLmHead;

    /// <summary>
    /// <see cref="Logits"/> for inference sessions, states [n, D] contiguous: on the CPU through the packed product
    /// (the head is frozen, so the packed copy is built once per draft, or is the target's own with the full
    /// vocabulary). The head is most of a large draft's step (110M shape: MKL's matrix-vector product was 62 % of it).
    /// Not for training: no gradient flows through it.
    /// </summary>
    internal Tensor SessionLogits(Tensor states, int n)
    {
        if (Dev.type != DeviceType.CPU) return Logits(states);
        var packed = Config.DraftVocab is null ? Target.PackedLmHead : null;
        if (packed is null)
            lock (_sessionWeightsLock)
                packed = _packedLmHead ??= PackHead();
        return packed.Linear(states, n);
    }

    PackedMatrix PackHead() => Pack(_target.LmHead.t());   // [D, Vd]

    /// <summary>RMSNorm over the last axis, weight applied.</summary>
    protected Tensor RmsNorm(Tensor x, Tensor weight) =>
        x * x.mul(x).mean([-1], keepdim: true).add(EpsScalar, OneScalar).rsqrt() * weight;

    /// <summary>RMSNorm without weight (the weight is folded into the next matmul on the inference path).</summary>
    protected internal Tensor RmsNormNoWeight(Tensor x) => x * x.mul(x).mean([-1], keepdim: true).add_(EpsScalar, OneScalar).rsqrt_();

    /// <summary>Rotary at positions: x [..., T, heads, hd], positions [T] int64 → same shape.</summary>
    protected Tensor ApplyRope(Tensor x, Tensor positions)
    {
        var pos = positions.to(int64).to(Dev);
        var cos = _rope.Cos.index_select(0, pos).unsqueeze(1);        // [T, 1, hd]
        var sin = _rope.SinSigned.index_select(0, pos).unsqueeze(1);
        return _rope.Apply(x, cos, sin, _pair);
    }

    /// <summary>
    /// Grouped-query attention, training layout. q [B, T, H, hd]; k, v [B, kvH, S, hd]; mask [T, S] or [B, T, S] bool
    /// (true = attend). Returns [B, T, H*hd].
    /// Guard: SDPA gives NaN for a row with no visible key (and NaN gradients into every weight). Such rows are
    /// opened to all keys for the softmax and their output is then multiplied by 0, so the attention contributes
    /// exactly zero for them (the empty sum) with finite gradients.
    /// </summary>
    protected Tensor Attend(Tensor q, Tensor k, Tensor v, Tensor mask)
    {
        long B = q.shape[0], T = q.shape[1], S = k.shape[2];
        int kvH = Config.KvHeads, G = Config.GroupSize, hd = Config.HeadDim;
        // Query heads sharing a kv head are stacked along the query axis: [B, kvH, G*T, hd]; mask rows repeat G times.
        var qq = q.view(B, T, kvH, G, hd).permute(0, 2, 3, 1, 4).reshape(B, kvH, G * T, hd);
        var m = mask.to(Dev);
        if (m.dtype != ScalarType.Bool) throw new ArgumentException("mask must be bool (true = attend)", nameof(mask));
        if (m.dim() == 2)
        {
            if (m.shape[0] != T || m.shape[1] != S) throw new ArgumentException($"mask must be [{T}, {S}], got [{string.Join(", ", m.shape)}]", nameof(mask));
            if (G > 1) m = m.repeat(G, 1);                                               // [G*T, S]
        }
        else if (m.dim() == 3)
        {
            if (m.shape[0] != B || m.shape[1] != T || m.shape[2] != S) throw new ArgumentException($"mask must be [{B}, {T}, {S}], got [{string.Join(", ", m.shape)}]", nameof(mask));
            m = (G > 1 ? m.repeat(1, G, 1) : m).unsqueeze(1);                            // [B, 1, G*T, S]
        }
        else throw new ArgumentException("mask must be [T, S] or [B, T, S]", nameof(mask));
        var visible = m.any(-1, keepdim: true);                                          // [.., G*T, 1]
        var safe = m.logical_or(visible.logical_not());
        var o = F.scaled_dot_product_attention(qq, k, v, attn_mask: safe);              // [B, kvH, G*T, hd]
        o = o * visible.to(o.dtype);
        return o.view(B, kvH, G, T, hd).permute(0, 3, 1, 2, 4).reshape(B, T, Config.QDim);
    }

    /// <summary>Inference attention for N query rows: q [N, H, hd]; k, v [S, kvH, hd]; mask [G*N, S] or null (all visible). → [N, H*hd].</summary>
    protected internal Tensor AttendRows(Tensor q, Tensor k, Tensor v, Tensor? mask)
    {
        long N = q.shape[0];
        int kvH = Config.KvHeads, G = Config.GroupSize, hd = Config.HeadDim;
        var qq = q.view(1, N, kvH, G, hd).permute(0, 2, 3, 1, 4).reshape(1, kvH, G * N, hd);  // rows ordered (g, n)
        var kk = k.permute(1, 0, 2).unsqueeze(0);                                         // [1, kvH, S, hd]
        var vv = v.permute(1, 0, 2).unsqueeze(0);
        var o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask: mask);              // [1, kvH, G*N, hd]
        return o.view(kvH, G, N, hd).permute(2, 0, 1, 3).reshape(N, Config.QDim);
    }

    /// <summary>Row permutation mapping each dimension of a [heads*hd] projection to its rotary partner.</summary>
    protected Tensor PartnerRows(int heads)
    {
        var idx = new long[heads * Config.HeadDim];
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < Config.HeadDim; j++) idx[h * Config.HeadDim + j] = h * Config.HeadDim + _rope.Pair[j];
        return tensor(idx, device: Dev);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _rope.Dispose();
            _pair.Dispose();
            EpsScalar.Dispose(); OneScalar.Dispose();
            if (_target.OwnsLmHead) _target.LmHead.Dispose();
        }
        base.Dispose(disposing);
    }
}
