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
        if (!UseManagedKernel(vocab * 2L * Config.QDim * 4 <= QueryTableMaxBytes)) return new Session(this, capacity);
        return new Kernels.ManagedBeagleSession(Config, capacity, SessionWeights(() =>
        {
            using var w = Fold();
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var table = RmsNormNoWeight(Target.Embedding).mm(w.WqT);                      // [V, 2Q]
            return HostWeights(w.WoT, w.W13T, w.W2T) with { QTable = Kernels.ManagedWeights.Host(table), WkvT = Kernels.ManagedWeights.Host(w.WkvT) };
        }));
    }


    /// <summary>Largest query table a session precomputes (32 MB: a 32k vocabulary at 2Q = 256).</summary>
    const long QueryTableMaxBytes = 32L << 20;

    /// <summary>Inference weights folded once per session (norm weights into the matmuls, rotary partners fused).</summary>
    sealed class Folded : IDisposable
    {
        public required Tensor WqT;    // [D, 2Q]: q | q-partner, q_norm folded in
        public required Tensor WkvT;   // [D, 2K + K]: k | k-partner | v, kv_norm folded in
        public required Tensor WoT;    // [Q, D]
        public required Tensor W13T;   // [D, 2F], mlp_norm folded in
        public required Tensor W2T;    // [F, D]
        /// <summary>
        /// [V, 2Q] = RMSNorm(E) · WqT for every token, or null. Queries depend only on the token, so for a small vocabulary
        /// the whole query projection (embedding lookup, norm, matmul: 7 ops a step) becomes one row lookup.
        /// </summary>
        public Tensor? QueryTable;
        public long Bytes => TensorBytes(WqT) + TensorBytes(WkvT) + TensorBytes(WoT) + TensorBytes(W13T) + TensorBytes(W2T) + TensorBytes(QueryTable);
        public void Dispose() { WqT.Dispose(); WkvT.Dispose(); WoT.Dispose(); W13T.Dispose(); W2T.Dispose(); QueryTable?.Dispose(); }
    }

    Folded Fold()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Tensor Keep(Tensor t) => t.detach().contiguous().DetachFromDisposeScope();
        int kv = Config.KvDim;
        var wq = _wq.weight! * _qNorm.unsqueeze(0);                                         // [Q, D]
        var wkv = _wkv.weight! * _kvNorm.unsqueeze(0);                                      // [2K, D]
        var wk = wkv.narrow(0, 0, kv); var wv = wkv.narrow(0, kv, kv);
        return new Folded
        {
            WqT = Keep(cat([wq, wq.index_select(0, PartnerRows(Config.Heads))], 0).t()),
            WkvT = Keep(cat([wk, wk.index_select(0, PartnerRows(Config.KvHeads)), wv], 0).t()),
            WoT = Keep(_wo.weight!.t()),
            W13T = Keep((_w13.weight! * _mlpNorm.unsqueeze(0)).t()),
            W2T = Keep(_w2.weight!.t()),
            QueryTable = null,
        };
    }

    /// <summary>
    /// One sequence's drafting state. K/V buffer [capacity + MaxRoundNodes, kvH, hd]: slots [0, Length) hold the
    /// projected true states; slots [Length, Length + SlotsUsed) the draft states of the current round, appended
    /// lazily (only when a deeper node names the node as parent) and forgotten by EndRound (the next Commit
    /// overwrites them). Weights are snapshotted (folded) when the session starts.
    /// </summary>
    sealed class Session : IDraftSession
    {
        readonly BeagleDraft _m;
        readonly Folded _w;
        readonly PackedSession? _packed;   // CPU: Wo, W13, W2, Wkv, Wq packed (shared by the draft's sessions)
        readonly Tensor _k, _v;          // [capacity + R, kvH, hd]
        readonly Tensor _states;         // [R, D] hhat of this round's nodes
        readonly RoundTree _round = new(MaxRoundNodes);
        readonly int _capacity;
        bool _disposed;

        public Session(BeagleDraft m, int capacity)
        {
            if (capacity <= 0 || capacity > m.Config.MaxPositions)
                throw new ArgumentOutOfRangeException(nameof(capacity), $"capacity must be in [1, {m.Config.MaxPositions}], got {capacity}");
            _m = m; _capacity = capacity;
            _w = m.Fold();
            _packed = m.PackedSessionMatrices(() => new([Pack(_w.WoT), Pack(_w.W13T), Pack(_w.W2T), Pack(_w.WkvT), Pack(_w.WqT)]));
            using var scope = NewDisposeScope();
            long vocab = m.Target.Embedding.shape[0];
            if (vocab * 2L * m.Config.QDim * 4 <= QueryTableMaxBytes)
                using (var _ = no_grad())
                    _w.QueryTable = m.RmsNormNoWeight(m.Target.Embedding).mm(_w.WqT).DetachFromDisposeScope();   // [V, 2Q]
            var c = m.Config;
            _k = zeros([capacity + MaxRoundNodes, c.KvHeads, c.HeadDim], device: m.Dev).DetachFromDisposeScope();
            _v = zeros([capacity + MaxRoundNodes, c.KvHeads, c.HeadDim], device: m.Dev).DetachFromDisposeScope();
            _states = zeros([MaxRoundNodes, c.Dim], device: m.Dev).DetachFromDisposeScope();
        }

        public int Length { get; private set; }
        public bool ConcatDraftStates { get; set; } = true;
        /// <summary>The K/V slots, the round's states and bookkeeping, and this session's folded weights.</summary>
        public long StateBytes => TensorBytes(_k) + TensorBytes(_v) + TensorBytes(_states) + _round.Bytes + _w.Bytes;

        /// <summary>Projects states [n, D] at positions [n] to rotated keys and values, each [n, kvH, hd].</summary>
        (Tensor k, Tensor v) ProjectKv(Tensor states, Tensor positions)
        {
            var c = _m.Config; int kv = c.KvDim; long n = states.shape[0];
            var h = _m.RmsNormNoWeight(states);
            var p = _packed is { } pk ? pk.Matrices[3].Linear(h, (int)n) : h.mm(_w.WkvT);   // [n, 3K]
            var cos = _m.Rope.Cos.index_select(0, positions).unsqueeze(1);                  // [n, 1, hd]
            var sin = _m.Rope.SinSigned.index_select(0, positions).unsqueeze(1);
            var k = addcmul(p.narrow(1, 0, kv).view(n, c.KvHeads, c.HeadDim) * cos, p.narrow(1, kv, kv).view(n, c.KvHeads, c.HeadDim), sin, _m.OneScalar);
            var v = p.narrow(1, 2 * kv, kv).view(n, c.KvHeads, c.HeadDim);
            return (k, v);
        }

        public void Commit(ReadOnlySpan<int> tokens, Tensor hidden)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            int m = tokens.Length;
            if (m == 0) return;
            DraftModelBase.CheckCommit(_round.Count, hidden, m, _m.Config.Dim, Length, _capacity);
            using var scope = NewDisposeScope();
            using var _ = inference_mode();
            var slots = arange(Length, Length + m, dtype: ScalarType.Int64, device: _m.Dev);  // slot = position
            var (k, v) = ProjectKv(hidden.to(float32).to(_m.Dev), slots);
            _k.index_copy_(0, slots, k);
            _v.index_copy_(0, slots, v);
            Length += m;
        }

        public Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (Length == 0) throw new InvalidOperationException("Commit the prompt before expanding: the root needs at least one true state");
            _round.Validate(tokens, positions, parents, _m.Config.MaxPositions);
            for (int i = 0; i < parents.Length; i++)
                if (parents[i] < 0 && positions[i] != Length)
                    throw new ArgumentException($"a root must be the pending token at position {Length}, got {positions[i]}", nameof(positions));
            var c = _m.Config;
            int N = tokens.Length, G = c.GroupSize, n0 = Length;
            using var scope = NewDisposeScope();
            using var _ = inference_mode();

            // Lazily append the draft states of parents that deeper nodes now need (their own ancestors already have slots).
            if (ConcatDraftStates)
            {
                List<long>? need = null;
                for (int i = 0; i < N; i++)
                    if (parents[i] >= 0 && _round.Slot(parents[i]) < 0 && !(need?.Contains(parents[i]) ?? false))
                        (need ??= []).Add(parents[i]);
                if (need is not null)
                {
                    var nodes = tensor(need.ToArray(), device: _m.Dev);
                    var pos = tensor(need.Select(p => (long)_round.Position((int)p)).ToArray(), device: _m.Dev);
                    var slotArr = new long[need.Count];
                    for (int j = 0; j < need.Count; j++) slotArr[j] = n0 + _round.AssignSlot((int)need[j]);
                    var (k, v) = ProjectKv(_states.index_select(0, nodes), pos);             // [P, kvH, hd]
                    var slots = tensor(slotArr, device: _m.Dev);
                    _k.index_copy_(0, slots, k);
                    _v.index_copy_(0, slots, v);
                }
            }
            int S = n0 + _round.SlotsUsed;
            Tensor? mask = null;                                                           // null: every key visible
            if (ConcatDraftStates && _round.SlotsUsed > 0)
            {
                var data = new bool[G * N * S];                                            // rows ordered (g, n)
                for (int i = 0; i < N; i++)
                {
                    var row = data.AsSpan(i * S, S);
                    _round.FillRow(row, n0, parents[i]);
                    for (int g = 1; g < G; g++) row.CopyTo(data.AsSpan((g * N + i) * S, S));
                }
                mask = tensor(data, [G * N, S], device: _m.Dev);
            }

            var posArr = new long[N];
            for (int i = 0; i < N; i++) posArr[i] = positions[i];
            var qpos = tensor(posArr, device: _m.Dev);
            var x = _m.Embed(tokens);                                                      // [N, D]
            var qp = _w.QueryTable is { } table ? table.index_select(0, TokenIndex(tokens)) // [N, 2Q]
                                                : _packed is { } pq ? pq.Matrices[4].Linear(_m.RmsNormNoWeight(x), N) : _m.RmsNormNoWeight(x).mm(_w.WqT);
            var cos = _m.Rope.Cos.index_select(0, qpos).unsqueeze(1);                      // [N, 1, hd]
            var sin = _m.Rope.SinSigned.index_select(0, qpos).unsqueeze(1);
            var q = addcmul(qp.narrow(1, 0, c.QDim).view(N, c.Heads, c.HeadDim) * cos,
                            qp.narrow(1, c.QDim, c.QDim).view(N, c.Heads, c.HeadDim), sin, _m.OneScalar);    // [N, H, hd]
            var o = _m.AttendRows(q, _k.narrow(0, 0, S), _v.narrow(0, 0, S), mask);       // [N, Q]
            var pm = _packed?.Matrices;
            var y = pm is null ? addmm(x, o, _w.WoT, 1, 1) : pm[0].Linear(o, N, x);      // [N, D]
            var yn = _m.RmsNormNoWeight(y);
            var gu = pm is null ? yn.mm(_w.W13T) : pm[1].Linear(yn, N);               // [N, 2F]
            int f = c.HiddenDim;
            var act = F.silu(gu.narrow(1, 0, f)).mul_(gu.narrow(1, f, f));
            var hhat = pm is null ? addmm(y, act, _w.W2T, 1, 1) : pm[2].Linear(act, N, y);   // [N, D]
            int first = _round.Add(positions, parents);
            _states.narrow(0, first, N).copy_(hhat);
            var logp = F.log_softmax(_m.SessionLogits(hhat, N), 1);                                   // [N, Vd]
            return logp.MoveToOuterDisposeScope();
        }

        public void EndRound() => _round.Clear();

        Tensor TokenIndex(ReadOnlySpan<int> tokens)
        {
            var ids = new long[tokens.Length];
            for (int i = 0; i < ids.Length; i++) ids[i] = tokens[i];   // range-checked by Embed above
            return tensor(ids, device: _m.Dev);
        }

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            _w.Dispose(); _k.Dispose(); _v.Dispose(); _states.Dispose();
        }
    }
}
