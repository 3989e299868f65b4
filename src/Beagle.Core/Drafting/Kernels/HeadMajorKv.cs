using System.Numerics;
using System.Runtime.InteropServices;
using System.Runtime.CompilerServices;

namespace Beagle.Drafting.Kernels;

/// <summary>
/// Keys and values of a managed draft session, stored head-dimension-major: [kvHeads, headDim, slots].
///
/// Why this layout: with head_dim 8, one key is a single SIMD register, so a slot-major cache means one tiny dot
/// product (plus a horizontal sum) per key and head. Transposed, a head's scores over every committed slot are
/// head_dim multiply-adds over contiguous rows, and its output is head_dim dot products over contiguous rows — long
/// vectorised loops instead of hundreds of short ones (measured in docs/benchmarks.md). Slots [0, n) are the committed positions; a round's draft states sit in later slots and are
/// attended individually (a node sees only its ancestors' ones).
/// </summary>
internal sealed class HeadMajorKv
{
    readonly float[] _k, _v;     // [kvH, hd, slots]
    readonly int _kvh, _hd, _slots;

    public HeadMajorKv(int kvHeads, int headDim, int slots)
    {
        (_kvh, _hd, _slots) = (kvHeads, headDim, slots);
        _k = new float[kvHeads * headDim * slots];
        _v = new float[kvHeads * headDim * slots];
    }

    public int Slots => _slots;

    /// <summary>Stores key k and value v ([kvH * hd] each, head-major) in <paramref name="slot"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Write(int slot, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        if ((uint)slot >= (uint)_slots) throw new ArgumentOutOfRangeException(nameof(slot));
        for (int i = 0; i < k.Length; i++) { _k[i * _slots + slot] = k[i]; _v[i * _slots + slot] = v[i]; }
    }

    /// <summary>
    /// Grouped-query attention of one query over slots [0, <paramref name="contiguous"/>) and the listed
    /// <paramref name="extra"/> slots. q: [heads * hd] (already rotated); o: [heads * hd]; scores: scratch of at least
    /// contiguous + extra.Length.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Attend(ReadOnlySpan<float> q, int contiguous, ReadOnlySpan<int> extra, int groupSize, float scale, Span<float> scores, Span<float> o)
    {
        if ((uint)contiguous > (uint)_slots) throw new ArgumentOutOfRangeException(nameof(contiguous), contiguous, $"only {_slots} slots");
        if (q.Length != _kvh * groupSize * _hd) throw new ArgumentException($"q has {q.Length} values, expected {_kvh} x {groupSize} x {_hd}", nameof(q));
        int heads = q.Length / _hd, n = contiguous, total = n + extra.Length;
        var s = scores[..total];
        var sc = s[..n];
        Span<float> qs = stackalloc float[_hd];
        for (int head = 0; head < heads; head++)
        {
            int baseRow = head / groupSize * _hd;
            var qh = q.Slice(head * _hd, _hd);
            for (int j = 0; j < _hd; j++) qs[j] = qh[j] * scale;
            // scores over the committed slots, then this node's ancestors' draft states
            float max = ManagedMath.HeadScores(qs, _k.AsSpan(baseRow * _slots), _slots, n, sc);
            for (int e = 0; e < extra.Length; e++)
            {
                float acc = 0;
                for (int j = 0; j < _hd; j++) acc += qs[j] * _k[(baseRow + j) * _slots + extra[e]];
                s[n + e] = acc;
                max = MathF.Max(max, acc);
            }
            float inv = 1f / ManagedMath.ExpShifted(s, max);
            // o[j] = sum_slots p * V[j, :]
            var oh = o.Slice(head * _hd, _hd);
            ManagedMath.HeadWeightedSum(sc, _v.AsSpan(baseRow * _slots), _slots, inv, oh);
            for (int e = 0; e < extra.Length; e++)
                for (int j = 0; j < _hd; j++) oh[j] += s[n + e] * inv * _v[(baseRow + j) * _slots + extra[e]];
        }
    }
}
