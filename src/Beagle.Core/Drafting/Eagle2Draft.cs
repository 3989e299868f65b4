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
        if (!UseManagedKernel(Target.Embedding.shape[0] * (long)Config.Dim * 4 <= 256L << 20)) return new Session(this, capacity);
        return new Kernels.ManagedEagle2Session(Config, capacity, SessionWeights(() =>
        {
            using var w = Fold();
            return HostWeights(w.WoT, w.W13T, w.W2T) with
            {
                WfcT = Kernels.ManagedWeights.Host(w.WfcT), Bfc = Kernels.ManagedWeights.Host(w.Bfc), WqkvT = Kernels.ManagedWeights.Host(w.WqkvT),
            };
        }));
    }

    sealed class Folded : IDisposable
    {
        public required Tensor WfcT;   // [2D, D]
        public required Tensor Bfc;    // [D]
        public required Tensor WqkvT;  // [D, 2(Q+K) + K]: q | k | q-partner | k-partner | v
        public required Tensor WoT;    // [Q, D]
        public required Tensor W13T;   // [D, 2F], post_norm folded in
        public required Tensor W2T;    // [F, D]
        public long Bytes => TensorBytes(WfcT) + TensorBytes(Bfc) + TensorBytes(WqkvT) + TensorBytes(WoT) + TensorBytes(W13T) + TensorBytes(W2T);
        public void Dispose() { WfcT.Dispose(); Bfc.Dispose(); WqkvT.Dispose(); WoT.Dispose(); W13T.Dispose(); W2T.Dispose(); }
    }

    Folded Fold()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Tensor Keep(Tensor t) => t.detach().contiguous().DetachFromDisposeScope();
        int qd = Config.QDim, kv = Config.KvDim;
        var w = _wqkv.weight!;
        var wq = w.narrow(0, 0, qd); var wk = w.narrow(0, qd, kv); var wv = w.narrow(0, qd + kv, kv);
        return new Folded
        {
            WfcT = Keep(_fc.weight!.t()),
            Bfc = Keep(_fc.bias!),
            WqkvT = Keep(cat([wq, wk, wq.index_select(0, PartnerRows(Config.Heads)), wk.index_select(0, PartnerRows(Config.KvHeads)), wv], 0).t()),
            WoT = Keep(_wo.weight!.t()),
            W13T = Keep((_w13.weight! * _postNorm.unsqueeze(0)).t()),
            W2T = Keep(_w2.weight!.t()),
        };
    }

    /// <summary>
    /// One sequence's drafting state. After Commit of positions [0, n), entries 0..n-2 (t_{j+1}, f_j) are final and
    /// their K/V live in slots [0, n-1); entry n-1 needs t_n, the root, so it is computed when the root is expanded
    /// (into the round region) and finalised by the next Commit. Round region: slots [n-1, n-1 + nodes), one per
    /// expanded node (every node attends itself, so its K/V is written at once). Node at tree position p is entry p-1.
    /// Deeper nodes always see their ancestors' entries (their own input is the parent's draft feature), so
    /// ConcatDraftStates cannot be turned off for EAGLE-2.
    /// </summary>
    sealed class Session : IDraftSession
    {
        readonly Eagle2Draft _m;
        readonly Folded _w;
        readonly PackedSession? _packed;   // CPU: Wo, W13, W2, Wfc, Wqkv packed, fc bias on the host (shared by the draft's sessions)
        readonly Tensor _k, _v;          // [capacity + R, kvH, hd]
        readonly Tensor _features;       // [capacity, D] committed true features f_j
        readonly Tensor _outs;           // [R, D] fhat of this round's nodes
        readonly int[] _tokens;          // committed tokens
        readonly RoundTree _round = new(MaxRoundNodes);
        readonly int _capacity;
        int _entries;                    // finalised entries (slots [0, _entries))
        bool _disposed;

        public Session(Eagle2Draft m, int capacity)
        {
            if (capacity <= 0 || capacity > m.Config.MaxPositions)
                throw new ArgumentOutOfRangeException(nameof(capacity), $"capacity must be in [1, {m.Config.MaxPositions}], got {capacity}");
            _m = m; _capacity = capacity;
            _w = m.Fold();
            _packed = m.PackedSessionMatrices(() => new([Pack(_w.WoT), Pack(_w.W13T), Pack(_w.W2T), Pack(_w.WfcT), Pack(_w.WqkvT)],
                _w.Bfc.detach().to(float32).cpu().data<float>().ToArray()));
            _tokens = new int[capacity];
            using var scope = NewDisposeScope();
            var c = m.Config;
            _k = zeros([capacity + MaxRoundNodes, c.KvHeads, c.HeadDim], device: m.Dev).DetachFromDisposeScope();
            _v = zeros([capacity + MaxRoundNodes, c.KvHeads, c.HeadDim], device: m.Dev).DetachFromDisposeScope();
            _features = zeros([capacity, c.Dim], device: m.Dev).DetachFromDisposeScope();
            _outs = zeros([MaxRoundNodes, c.Dim], device: m.Dev).DetachFromDisposeScope();
        }

        public int Length { get; private set; }
        /// <summary>The K/V slots, committed features and tokens, the round's outputs and bookkeeping, and this session's folded weights.</summary>
        public long StateBytes => TensorBytes(_k) + TensorBytes(_v) + TensorBytes(_features) + TensorBytes(_outs) + (long)_tokens.Length * sizeof(int) + _round.Bytes + _w.Bytes;

        public bool ConcatDraftStates
        {
            get => true;
            set { if (!value) throw new NotSupportedException("EAGLE-2 drafts always see their ancestors' entries (their input is the parent's draft feature)"); }
        }

        /// <summary>Fused input x = fc(e(t) | f) [N, D], then q [N, H, hd], k, v [N, kvH, hd] rotated at positions [N].</summary>
        (Tensor x, Tensor q, Tensor k, Tensor v) Project(Tensor emb, Tensor feat, Tensor positions)
        {
            var c = _m.Config; long n = emb.shape[0];
            int qk = c.QDim + c.KvDim;
            Tensor x, p;
            if (_packed is { } pk)
            {
                x = pk.Matrices[3].Linear(cat([emb, feat], 1), (int)n, bias: pk.Bias);          // fc: bias + [e | f] · Wfc
                p = pk.Matrices[4].Linear(x, (int)n);
            }
            else
            {
                x = addmm(_w.Bfc, cat([emb, feat], 1), _w.WfcT, 1, 1);                           // [n, D]
                p = x.mm(_w.WqkvT);                                                         // [n, 2(Q+K) + K]
            }
            var cos = _m.Rope.Cos.index_select(0, positions).unsqueeze(1);                  // [n, 1, hd]
            var sin = _m.Rope.SinSigned.index_select(0, positions).unsqueeze(1);
            var r = addcmul(p.narrow(1, 0, qk).view(n, c.Heads + c.KvHeads, c.HeadDim) * cos,
                            p.narrow(1, qk, qk).view(n, c.Heads + c.KvHeads, c.HeadDim), sin, _m.OneScalar);   // [n, H+kvH, hd]
            var v = p.narrow(1, 2 * qk, c.KvDim).view(n, c.KvHeads, c.HeadDim);
            return (x, r.narrow(1, 0, c.Heads), r.narrow(1, c.Heads, c.KvHeads), v);
        }

        public void Commit(ReadOnlySpan<int> tokens, Tensor hidden)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            int m = tokens.Length;
            if (m == 0) return;
            DraftModelBase.CheckCommit(_round.Count, hidden, m, _m.Config.Dim, Length, _capacity);
            using var scope = NewDisposeScope();
            using var _ = inference_mode();
            _features.narrow(0, Length, m).copy_(hidden.to(float32).to(_m.Dev));
            tokens.CopyTo(_tokens.AsSpan(Length));
            Length += m;
            // Finalise entries j in [_entries, Length-1): (t_{j+1}, f_j) at position j.
            int e1 = Length - 1, cnt = e1 - _entries;
            if (cnt <= 0) return;
            var slots = arange(_entries, e1, dtype: ScalarType.Int64, device: _m.Dev);
            var (_, _, k, v) = Project(_m.Embed(_tokens.AsSpan(_entries + 1, cnt)), _features.narrow(0, _entries, cnt), slots);
            _k.index_copy_(0, slots, k);
            _v.index_copy_(0, slots, v);
            _entries = e1;
        }

        public Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (Length == 0) throw new InvalidOperationException("Commit the prompt before expanding: the root pairs with the last true feature");
            _round.Validate(tokens, positions, parents, _m.Config.MaxPositions + 1);
            var c = _m.Config;
            int N = tokens.Length, G = c.GroupSize, e0 = _entries;
            var posArr = new long[N]; var featRows = new long[N]; var slotArr = new long[N];
            bool anyRoot = false, anyChild = false;
            for (int i = 0; i < N; i++)
            {
                if (parents[i] < 0)
                {
                    if (positions[i] != Length) throw new ArgumentException($"a root must be the pending token at position {Length}, got {positions[i]}", nameof(positions));
                    anyRoot = true;
                }
                else anyChild = true;
                posArr[i] = positions[i] - 1;                                               // entry index = token position - 1
                featRows[i] = parents[i] < 0 ? -1 : parents[i];
            }
            using var scope = NewDisposeScope();
            using var _ = inference_mode();
            // Input features: the last true feature for roots, the parent's draft feature otherwise.
            Tensor feat;
            if (!anyChild) feat = _features.narrow(0, Length - 1, 1).expand(N, c.Dim);
            else if (!anyRoot) feat = _outs.index_select(0, tensor(featRows, device: _m.Dev));
            else
            {
                var all = cat([_outs, _features.narrow(0, Length - 1, 1)], 0);              // row R = last true feature
                for (int i = 0; i < N; i++) if (featRows[i] < 0) featRows[i] = MaxRoundNodes;
                feat = all.index_select(0, tensor(featRows, device: _m.Dev));
            }
            var pos = tensor(posArr, device: _m.Dev);
            var (x, q, k, v) = Project(_m.Embed(tokens), feat, pos);                      // x [N, D]; q [N, H, hd]; k, v [N, kvH, hd]
            int first = _round.Add(positions, parents);
            for (int i = 0; i < N; i++) slotArr[i] = e0 + _round.AssignSlot(first + i);
            var slots = tensor(slotArr, device: _m.Dev);
            _k.index_copy_(0, slots, k);
            _v.index_copy_(0, slots, v);
            int S = e0 + _round.SlotsUsed;
            Tensor? mask = null;
            if (_round.SlotsUsed > 1)
            {
                var data = new bool[G * N * S];                                            // rows ordered (g, n)
                for (int i = 0; i < N; i++)
                {
                    var row = data.AsSpan(i * S, S);
                    _round.FillRow(row, e0, first + i);                                     // itself and its ancestors
                    for (int g = 1; g < G; g++) row.CopyTo(data.AsSpan((g * N + i) * S, S));
                }
                mask = tensor(data, [G * N, S], device: _m.Dev);
            }
            var o = _m.AttendRows(q, _k.narrow(0, 0, S), _v.narrow(0, 0, S), mask);      // [N, Q]
            var pm = _packed?.Matrices;
            var a = pm is null ? addmm(x, o, _w.WoT, 1, 1) : pm[0].Linear(o, N, x);      // [N, D]
            var an = _m.RmsNormNoWeight(a);
            var gu = pm is null ? an.mm(_w.W13T) : pm[1].Linear(an, N);               // [N, 2F]
            int f = c.HiddenDim;
            var act = F.silu(gu.narrow(1, 0, f)).mul_(gu.narrow(1, f, f));
            var fhat = pm is null ? addmm(a, act, _w.W2T, 1, 1) : pm[2].Linear(act, N, a);   // [N, D]
            _outs.narrow(0, first, N).copy_(fhat);
            return F.log_softmax(_m.SessionLogits(fhat, N), 1).MoveToOuterDisposeScope();           // [N, Vd]
        }

        public void EndRound() => _round.Clear();

        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            _w.Dispose(); _k.Dispose(); _v.Dispose(); _features.Dispose(); _outs.Dispose();
        }
    }
}
