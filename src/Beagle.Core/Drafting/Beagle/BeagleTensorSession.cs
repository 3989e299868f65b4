using Beagle.Drafting.Kernels;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Beagle.Drafting;

/// <summary>
/// The Beagle draft's tensor session (any device; <see cref="ManagedBeagleSession"/> is its CPU twin for small drafts):
/// one sequence's drafting state. K/V buffer [capacity + MaxRoundNodes, kvH, hd]: slots [0, Length) hold the
/// projected true states; slots [Length, Length + SlotsUsed) the draft states of the current round, appended
/// lazily (only when a deeper node names the node as parent) and forgotten by EndRound (the next Commit
/// overwrites them). Weights are snapshotted (folded) when the session starts.
/// </summary>
internal sealed class BeagleTensorSession : IDraftSession
{
    readonly BeagleDraft _m;
    readonly BeagleFoldedWeights _w;
    readonly BeaglePackedWeights? _packed;   // CPU only; shared by the draft's sessions
    readonly Tensor _k, _v;          // [capacity + R, kvH, hd]
    readonly Tensor _states;         // [R, D] hhat of this round's nodes
    readonly RoundTree _round = new(DraftModelBase.MaxRoundNodes);
    readonly int _capacity;
    bool _disposed;

    public BeagleTensorSession(BeagleDraft m, int capacity)
    {
        if (capacity <= 0 || capacity > m.Config.MaxPositions)
            throw new ArgumentOutOfRangeException(nameof(capacity), $"capacity must be in [1, {m.Config.MaxPositions}], got {capacity}");
        _m = m; _capacity = capacity;
        _w = m.Fold();
        _packed = m.PackedSessionWeights(() => new BeaglePackedWeights(Wo: DraftModelBase.Pack(_w.WoT), W13: DraftModelBase.Pack(_w.W13T),
            W2: DraftModelBase.Pack(_w.W2T), Wkv: DraftModelBase.Pack(_w.WkvT), Wq: DraftModelBase.Pack(_w.WqT)));
        using var scope = NewDisposeScope();
        long vocab = m.Target.Embedding.shape[0];
        if (vocab * 2L * m.Config.QDim * 4 <= BeagleDraft.QueryTableMaxBytes)
            using (var _ = no_grad())
                _w.QueryTable = m.RmsNormNoWeight(m.Target.Embedding).mm(_w.WqT).DetachFromDisposeScope();   // [V, 2Q]
        var c = m.Config;
        _k = zeros([capacity + DraftModelBase.MaxRoundNodes, c.KvHeads, c.HeadDim], device: m.Dev).DetachFromDisposeScope();
        _v = zeros([capacity + DraftModelBase.MaxRoundNodes, c.KvHeads, c.HeadDim], device: m.Dev).DetachFromDisposeScope();
        _states = zeros([DraftModelBase.MaxRoundNodes, c.Dim], device: m.Dev).DetachFromDisposeScope();
    }

    public int Length { get; private set; }
    public bool ConcatDraftStates { get; set; } = true;
    /// <summary>The K/V slots, the round's states and bookkeeping, and this session's folded weights.</summary>
    public long StateBytes => DraftModelBase.TensorBytes(_k) + DraftModelBase.TensorBytes(_v) + DraftModelBase.TensorBytes(_states) + _round.Bytes + _w.Bytes;

    /// <summary>Projects states [n, D] at positions [n] to rotated keys and values, each [n, kvH, hd].</summary>
    (Tensor k, Tensor v) ProjectKv(Tensor states, Tensor positions)
    {
        var c = _m.Config; int kv = c.KvDim; long n = states.shape[0];
        var h = _m.RmsNormNoWeight(states);
        var p = _packed is { } pk ? pk.Wkv.Linear(h, (int)n) : h.mm(_w.WkvT);   // [n, 3K]
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
                                            : _packed is { } pq ? pq.Wq.Linear(_m.RmsNormNoWeight(x), N) : _m.RmsNormNoWeight(x).mm(_w.WqT);
        var cos = _m.Rope.Cos.index_select(0, qpos).unsqueeze(1);                      // [N, 1, hd]
        var sin = _m.Rope.SinSigned.index_select(0, qpos).unsqueeze(1);
        var q = addcmul(qp.narrow(1, 0, c.QDim).view(N, c.Heads, c.HeadDim) * cos,
                        qp.narrow(1, c.QDim, c.QDim).view(N, c.Heads, c.HeadDim), sin, _m.OneScalar);    // [N, H, hd]
        var o = _m.AttendRows(q, _k.narrow(0, 0, S), _v.narrow(0, 0, S), mask);       // [N, Q]
        var pk = _packed;
        var y = pk is null ? addmm(x, o, _w.WoT, 1, 1) : pk.Wo.Linear(o, N, x);      // [N, D]
        var yn = _m.RmsNormNoWeight(y);
        var gu = pk is null ? yn.mm(_w.W13T) : pk.W13.Linear(yn, N);               // [N, 2F]
        int f = c.HiddenDim;
        var act = F.silu(gu.narrow(1, 0, f)).mul_(gu.narrow(1, f, f));
        var hhat = pk is null ? addmm(y, act, _w.W2T, 1, 1) : pk.W2.Linear(act, N, y);   // [N, D]
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
