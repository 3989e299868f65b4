using Beagle.Compute;
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
    /// <summary>Bytes of the key and value arrays.</summary>
    public long Bytes => ((long)_k.Length + _v.Length) * sizeof(float);

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
    /// contiguous + extra.Length, or twice that to take the query heads of a kv head in pairs (one pass over the keys
    /// and values for both, as the target's attention does; each value is computed as the single-head path computes it).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Attend(ReadOnlySpan<float> q, int contiguous, ReadOnlySpan<int> extra, int groupSize, float scale, Span<float> scores, Span<float> o)
    {
        if ((uint)contiguous > (uint)_slots) throw new ArgumentOutOfRangeException(nameof(contiguous), contiguous, $"only {_slots} slots");
        if (q.Length != _kvh * groupSize * _hd) throw new ArgumentException($"q has {q.Length} values, expected {_kvh} x {groupSize} x {_hd}", nameof(q));
        int n = contiguous, total = n + extra.Length;
        if (scores.Length < total) throw new ArgumentException($"scores scratch has {scores.Length} values, needs {total}", nameof(scores));
        bool pairs = scores.Length >= 2 * total;
        Span<float> qs = stackalloc float[2 * _hd];
        for (int j = 0; j < _kvh; j++)
        {
            int baseRow = j * _hd, h = j * groupSize, end = h + groupSize;
            var kBlock = _k.AsSpan(baseRow * _slots); var vBlock = _v.AsSpan(baseRow * _slots);
            for (; pairs && h + 2 <= end; h += 2)
            {
                var q0 = qs[.._hd]; var q1 = qs[_hd..];
                for (int d = 0; d < _hd; d++) { q0[d] = q[h * _hd + d] * scale; q1[d] = q[(h + 1) * _hd + d] * scale; }
                var s0 = scores[..total]; var s1 = scores.Slice(total, total);
                var (m0, m1) = ManagedMath.HeadScoresPair(q0, q1, kBlock, _slots, n, s0, s1);
                m0 = ExtraScores(q0, baseRow, extra, s0[n..], m0); m1 = ExtraScores(q1, baseRow, extra, s1[n..], m1);
                float inv0 = 1f / ManagedMath.ExpShifted(s0, m0), inv1 = 1f / ManagedMath.ExpShifted(s1, m1);
                var o0 = o.Slice(h * _hd, _hd); var o1 = o.Slice((h + 1) * _hd, _hd);
                ManagedMath.HeadWeightedSumPair(s0[..n], s1[..n], vBlock, _slots, inv0, inv1, o0, o1);
                ExtraValues(s0[n..], inv0, baseRow, extra, o0); ExtraValues(s1[n..], inv1, baseRow, extra, o1);
            }
            for (; h < end; h++)
            {
                var qh = qs[.._hd];
                for (int d = 0; d < _hd; d++) qh[d] = q[h * _hd + d] * scale;
                var s = scores[..total];
                float max = ManagedMath.HeadScores(qh, kBlock, _slots, n, s);
                max = ExtraScores(qh, baseRow, extra, s[n..], max);
                float inv = 1f / ManagedMath.ExpShifted(s, max);
                var oh = o.Slice(h * _hd, _hd);
                ManagedMath.HeadWeightedSum(s[..n], vBlock, _slots, inv, oh);
                ExtraValues(s[n..], inv, baseRow, extra, oh);
            }
        }
    }

    /// <summary>Scores of this node's ancestors' draft states (slots listed in <paramref name="extra"/>); returns the running max.</summary>
    float ExtraScores(ReadOnlySpan<float> q, int baseRow, ReadOnlySpan<int> extra, Span<float> s, float max)
    {
        for (int e = 0; e < extra.Length; e++)
        {
            float acc = 0;
            for (int j = 0; j < _hd; j++) acc += q[j] * _k[(baseRow + j) * _slots + extra[e]];
            s[e] = acc;
            max = MathF.Max(max, acc);
        }
        return max;
    }

    /// <summary>o += the weights of the ancestors' draft states times their values.</summary>
    void ExtraValues(ReadOnlySpan<float> p, float inv, int baseRow, ReadOnlySpan<int> extra, Span<float> o)
    {
        for (int e = 0; e < extra.Length; e++)
            for (int j = 0; j < _hd; j++) o[j] += p[e] * inv * _v[(baseRow + j) * _slots + extra[e]];
    }
}
