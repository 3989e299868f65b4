using Beagle.Drafting.Kernels;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Beagle.Drafting;

/// <summary>
/// The EAGLE-2 draft's tensor session (any device; <see cref="ManagedEagle2Session"/> is its CPU twin for small drafts):
/// one sequence's drafting state. After Commit of positions [0, n), entries 0..n-2 (t_{j+1}, f_j) are final and
/// their K/V live in slots [0, n-1); entry n-1 needs t_n, the root, so it is computed when the root is expanded
/// (into the round region) and finalised by the next Commit. Round region: slots [n-1, n-1 + nodes), one per
/// expanded node (every node attends itself, so its K/V is written at once). Node at tree position p is entry p-1.
/// Deeper nodes always see their ancestors' entries (their own input is the parent's draft feature), so
/// ConcatDraftStates cannot be turned off for EAGLE-2.
/// </summary>
internal sealed class Eagle2TensorSession : IDraftSession
{
    readonly Eagle2Draft _m;
    readonly Eagle2FoldedWeights _w;
    readonly Eagle2PackedWeights? _packed;   // CPU only; shared by the draft's sessions
    readonly Tensor _k, _v;          // [capacity + R, kvH, hd]
    readonly Tensor _features;       // [capacity, D] committed true features f_j
    readonly Tensor _outs;           // [R, D] fhat of this round's nodes
    readonly int[] _tokens;          // committed tokens
    readonly RoundTree _round = new(DraftModelBase.MaxRoundNodes);
    readonly int _capacity;
    int _entries;                    // finalised entries (slots [0, _entries))
    bool _disposed;

    public Eagle2TensorSession(Eagle2Draft m, int capacity)
    {
        if (capacity <= 0 || capacity > m.Config.MaxPositions)
            throw new ArgumentOutOfRangeException(nameof(capacity), $"capacity must be in [1, {m.Config.MaxPositions}], got {capacity}");
        _m = m; _capacity = capacity;
        _w = m.Fold();
        _packed = m.PackedSessionWeights(() => new Eagle2PackedWeights(Wo: DraftModelBase.Pack(_w.WoT), W13: DraftModelBase.Pack(_w.W13T),
            W2: DraftModelBase.Pack(_w.W2T), Wfc: DraftModelBase.Pack(_w.WfcT), Wqkv: DraftModelBase.Pack(_w.WqkvT),
            Bfc: _w.Bfc.detach().to(float32).cpu().data<float>().ToArray()));
        _tokens = new int[capacity];
        using var scope = NewDisposeScope();
        var c = m.Config;
        _k = zeros([capacity + DraftModelBase.MaxRoundNodes, c.KvHeads, c.HeadDim], device: m.Dev).DetachFromDisposeScope();
        _v = zeros([capacity + DraftModelBase.MaxRoundNodes, c.KvHeads, c.HeadDim], device: m.Dev).DetachFromDisposeScope();
        _features = zeros([capacity, c.Dim], device: m.Dev).DetachFromDisposeScope();
        _outs = zeros([DraftModelBase.MaxRoundNodes, c.Dim], device: m.Dev).DetachFromDisposeScope();
    }

    public int Length { get; private set; }
    /// <summary>The K/V slots, committed features and tokens, the round's outputs and bookkeeping, and this session's folded weights.</summary>
    public long StateBytes => DraftModelBase.TensorBytes(_k) + DraftModelBase.TensorBytes(_v) + DraftModelBase.TensorBytes(_features) + DraftModelBase.TensorBytes(_outs) + (long)_tokens.Length * sizeof(int) + _round.Bytes + _w.Bytes;

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
            x = pk.Wfc.Linear(cat([emb, feat], 1), (int)n, bias: pk.Bfc);          // fc: bias + [e | f] · Wfc
            p = pk.Wqkv.Linear(x, (int)n);
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
            for (int i = 0; i < N; i++) if (featRows[i] < 0) featRows[i] = DraftModelBase.MaxRoundNodes;
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
        var pk = _packed;
        var a = pk is null ? addmm(x, o, _w.WoT, 1, 1) : pk.Wo.Linear(o, N, x);      // [N, D]
        var an = _m.RmsNormNoWeight(a);
        var gu = pk is null ? an.mm(_w.W13T) : pk.W13.Linear(an, N);               // [N, 2F]
        int f = c.HiddenDim;
        var act = F.silu(gu.narrow(1, 0, f)).mul_(gu.narrow(1, f, f));
        var fhat = pk is null ? addmm(a, act, _w.W2T, 1, 1) : pk.W2.Linear(act, N, a);   // [N, D]
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
