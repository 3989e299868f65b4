using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Beagle.Compute;

/// <summary>Small SIMD helpers (System.Numerics.Vector) shared by the target's CPU forward and the managed draft kernels: row-major float spans.</summary>
/// Hot paths are compiled fully optimised at once (AggressiveOptimization): tier-0 code for Vector&lt;T&gt; is many times
/// slower, and a generation is over before tiering would promote it (measured: the kernel ran slower than tensors without it).
/// For the same reason the kernel does not call System.Numerics.Tensors.TensorPrimitives: its vector code is not
/// precompiled, starts at tier 0, and made the first generation of a process ~3x slower per draft step (measured).
internal static class ManagedMath
{
    /// <summary>Largest element (v must be non-empty).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Max(ReadOnlySpan<float> v)
    {
        int n = v.Length, vw = Vector<float>.Count, i = 0;
        float m = float.NegativeInfinity;
        if (n >= vw)
        {
            var acc = new Vector<float>(float.NegativeInfinity);
            ref float r = ref MemoryMarshal.GetReference(v);
            for (; i + vw <= n; i += vw) acc = Vector.Max(acc, Vector.LoadUnsafe(ref r, (nuint)i));
            for (int j = 0; j < vw; j++) m = MathF.Max(m, acc[j]);
        }
        for (; i < n; i++) m = MathF.Max(m, v[i]);
        return m;
    }

    /// <summary>
    /// e^x lane by lane, within ~2 ulp (Cephes' expf: x = n·ln2 + r, |r| ≤ ln2/2, a degree-6 polynomial for e^r, then
    /// 2^n built in the exponent bits); x below −87.3 (including −∞, a masked score) gives exactly 0, x above 88.7 the
    /// largest finite result. Why not <see cref="Vector.Exp(Vector{float})"/>: about as fast (512 values: 0.40 vs 0.37
    /// µs, docs/benchmarks.md), but a call per vector in these loops and its masked-score behaviour not ours to pin down.
    /// Every kernel calls this one function, so a value's exponential never depends on which kernel or batch computed it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<float> Exp(Vector<float> x)
    {
        var zero = Vector.LessThan(x, new Vector<float>(-87.3f));
        x = Vector.Min(x, new Vector<float>(88.7f));
        var n = Vector.Floor(Vector.FusedMultiplyAdd(x, new Vector<float>(1.44269504088896341f), new Vector<float>(0.5f)));
        var r = Vector.FusedMultiplyAdd(n, new Vector<float>(-0.693359375f), x);          // ln2 split in two (Cody-Waite)
        r = Vector.FusedMultiplyAdd(n, new Vector<float>(2.12194440e-4f), r);
        var p = new Vector<float>(1.9875691500e-4f);
        p = Vector.FusedMultiplyAdd(p, r, new Vector<float>(1.3981999507e-3f));
        p = Vector.FusedMultiplyAdd(p, r, new Vector<float>(8.3334519073e-3f));
        p = Vector.FusedMultiplyAdd(p, r, new Vector<float>(4.1665795894e-2f));
        p = Vector.FusedMultiplyAdd(p, r, new Vector<float>(1.6666665459e-1f));
        p = Vector.FusedMultiplyAdd(p, r, new Vector<float>(5.0000001201e-1f));
        p = Vector.FusedMultiplyAdd(p, r * r, r + Vector<float>.One);
        // 2^n for n in [-126, 128], built in two halves: 2^128 alone does not fit the exponent field (x ≥ 88.38 gives n = 128).
        var ni = Vector.ConvertToInt32(n);
        var half = Vector.ShiftRightArithmetic(ni, 1);
        var s1 = Vector.AsVectorSingle(Vector.ShiftLeft(half + new Vector<int>(127), 23));
        var s2 = Vector.AsVectorSingle(Vector.ShiftLeft(ni - half + new Vector<int>(127), 23));
        return Vector.AndNot(p * s1 * s2, Vector.AsVectorSingle(zero));
    }

    /// <summary>The scalar <see cref="Exp(Vector{float})"/>: the same arithmetic, so a value's exponential does not depend on whether it fell in a vector block or a tail.</summary>
    public static float Exp(float x) => Exp(new Vector<float>(x))[0];

    /// <summary>
    /// Lanes [vw − rem, vw) set: the lanes of an overlapping last vector (the one ending at n) that lie past the last full
    /// block. The kernels below finish a row of n ≥ vw values with that one vector instead of n mod vw scalar steps: a
    /// scalar exponential costs as much as a vector one, and scalar tails were ~30 % of an attention head at ~80 slots.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector<float> TailLanes(int rem) =>
        Vector.AsVectorSingle(Vector.GreaterThanOrEqual(Vector<int>.Indices, new Vector<int>(Vector<float>.Count - rem)));

    /// <summary>v[i] = exp(v[i] - shift) in place; returns the sum of the results.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float ExpShifted(Span<float> v, float shift)
    {
        int n = v.Length, vw = Vector<float>.Count, i = 0;
        ref float r = ref MemoryMarshal.GetReference(v);
        var sh = new Vector<float>(shift);
        var sum = Vector<float>.Zero;
        int rem = n % vw;
        var last = n >= vw && rem != 0 ? Vector.LoadUnsafe(ref r, (nuint)(n - vw)) : default;   // before the loop overwrites its first lanes
        for (; i + vw <= n; i += vw)
        {
            var e = Exp(Vector.LoadUnsafe(ref r, (nuint)i) - sh);
            e.StoreUnsafe(ref r, (nuint)i);
            sum += e;
        }
        if (n >= vw && rem != 0)
        {
            var fresh = TailLanes(rem);
            var e = Vector.ConditionalSelect(fresh, Exp(last - sh), Vector<float>.Zero);
            sum += e;
            Vector.ConditionalSelect(fresh, e, Vector.LoadUnsafe(ref r, (nuint)(n - vw))).StoreUnsafe(ref r, (nuint)(n - vw));
            return Vector.Sum(sum);
        }
        float s = Vector.Sum(sum);
        for (; i < n; i++) { v[i] = Exp(v[i] - shift); s += v[i]; }
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int n = a.Length, i = 0;
        var acc = Vector<float>.Zero;
        var va = MemoryMarshal.Cast<float, Vector<float>>(a);
        var vb = MemoryMarshal.Cast<float, Vector<float>>(b[..n]);
        for (int k = 0; k < va.Length; k++) acc += va[k] * vb[k];
        i = va.Length * Vector<float>.Count;
        float s = Vector.Dot(acc, Vector<float>.One);
        for (; i < n; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>
    /// Attention scores of one query over a head-dimension-major key block: scores[s] = Σ_d q[d] · K[d·stride + s] for
    /// s in [0, n), q already scaled. Returns the largest score (−∞ when n = 0).
    /// Four SIMD blocks of slots are summed at a time: each block's sum over d is a chain of dependent multiply-adds
    /// (4 cycles each), so one block at a time left the FMA units idle most of the time (measured: a draft step's
    /// attention 3.6 → 2.45 µs at 100 slots). The loop is <see cref="MatVec"/>'s with a row stride plus a running max;
    /// calling a strided MatVec and then <see cref="Max"/> measured 5-13 % slower (2.45 → 2.58 µs at 100 slots, 3.67 →
    /// 4.14 at 200), a cost every target layer pays per head and token, so the fused copy stays.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float HeadScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, int stride, int n, Span<float> scores)
    {
        int hd = q.Length, vw = Vector<float>.Count;
        if (n < 0 || scores.Length < n) throw new ArgumentOutOfRangeException(nameof(n));
        if (n > 0 && k.Length < (hd - 1) * stride + n) throw new ArgumentException("key block too short", nameof(k));
        if (n > stride) throw new ArgumentOutOfRangeException(nameof(n), "more slots than the block's stride");
        ref float k0 = ref MemoryMarshal.GetReference(k);
        ref float s0 = ref MemoryMarshal.GetReference(scores);
        var vmax = new Vector<float>(float.NegativeInfinity);
        int s = 0;
        for (; s + 4 * vw <= n; s += 4 * vw)
        {
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int d = 0; d < hd; d++)
            {
                var qd = new Vector<float>(q[d]);
                nuint at = (nuint)(d * stride + s);
                a0 = Vector.FusedMultiplyAdd(qd, Vector.LoadUnsafe(ref k0, at), a0);
                a1 = Vector.FusedMultiplyAdd(qd, Vector.LoadUnsafe(ref k0, at + (nuint)vw), a1);
                a2 = Vector.FusedMultiplyAdd(qd, Vector.LoadUnsafe(ref k0, at + (nuint)(2 * vw)), a2);
                a3 = Vector.FusedMultiplyAdd(qd, Vector.LoadUnsafe(ref k0, at + (nuint)(3 * vw)), a3);
            }
            a0.StoreUnsafe(ref s0, (nuint)s); a1.StoreUnsafe(ref s0, (nuint)(s + vw));
            a2.StoreUnsafe(ref s0, (nuint)(s + 2 * vw)); a3.StoreUnsafe(ref s0, (nuint)(s + 3 * vw));
            vmax = Vector.Max(vmax, Vector.Max(Vector.Max(a0, a1), Vector.Max(a2, a3)));
        }
        for (; s + vw <= n; s += vw)
        {
            Vector<float> a0 = default;
            for (int d = 0; d < hd; d++) a0 = Vector.FusedMultiplyAdd(new Vector<float>(q[d]), Vector.LoadUnsafe(ref k0, (nuint)(d * stride + s)), a0);
            a0.StoreUnsafe(ref s0, (nuint)s);
            vmax = Vector.Max(vmax, a0);
        }
        if (s < n && n >= vw)
        {
            // The vector ending at n: its first lanes recompute scores already stored, bit for bit.
            Vector<float> a0 = default;
            for (int d = 0; d < hd; d++) a0 = Vector.FusedMultiplyAdd(new Vector<float>(q[d]), Vector.LoadUnsafe(ref k0, (nuint)(d * stride + n - vw)), a0);
            a0.StoreUnsafe(ref s0, (nuint)(n - vw));
            vmax = Vector.Max(vmax, a0);
            s = n;
        }
        float max = float.NegativeInfinity;
        for (int j = 0; j < vw; j++) max = MathF.Max(max, vmax[j]);
        for (; s < n; s++)
        {
            float acc = 0;
            for (int d = 0; d < hd; d++) acc += q[d] * k[d * stride + s];
            scores[s] = acc;
            max = MathF.Max(max, acc);
        }
        return max;
    }

    /// <summary>
    /// o[d] = scale · Σ_s p[s] · V[d·stride + s] over s in [0, p.Length), V head-dimension-major. Four rows of V at a time,
    /// each with its own accumulator (independent chains, as in <see cref="HeadScores"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void HeadWeightedSum(ReadOnlySpan<float> p, ReadOnlySpan<float> v, int stride, float scale, Span<float> o)
    {
        int n = p.Length, hd = o.Length, vw = Vector<float>.Count;
        if (n > stride) throw new ArgumentOutOfRangeException(nameof(p), "more slots than the block's stride");
        if (n > 0 && v.Length < (hd - 1) * stride + n) throw new ArgumentException("value block too short", nameof(v));
        ref float v0 = ref MemoryMarshal.GetReference(v);
        ref float p0 = ref MemoryMarshal.GetReference(p);
        int blocks = n / vw * vw;
        int d = 0;
        for (; d + 4 <= hd; d += 4)
        {
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
            nuint r0 = (nuint)(d * stride), r1 = r0 + (nuint)stride, r2 = r1 + (nuint)stride, r3 = r2 + (nuint)stride;
            for (int s = 0; s < blocks; s += vw)
            {
                var ps = Vector.LoadUnsafe(ref p0, (nuint)s);
                a0 = Vector.FusedMultiplyAdd(ps, Vector.LoadUnsafe(ref v0, r0 + (nuint)s), a0);
                a1 = Vector.FusedMultiplyAdd(ps, Vector.LoadUnsafe(ref v0, r1 + (nuint)s), a1);
                a2 = Vector.FusedMultiplyAdd(ps, Vector.LoadUnsafe(ref v0, r2 + (nuint)s), a2);
                a3 = Vector.FusedMultiplyAdd(ps, Vector.LoadUnsafe(ref v0, r3 + (nuint)s), a3);
            }
            if (blocks < n && n >= vw)
            {
                // The vector ending at n with the weights of slots already summed zeroed (0 · V adds exactly nothing).
                nuint t = (nuint)(n - vw);
                var ps = Vector.ConditionalSelect(TailLanes(n - blocks), Vector.LoadUnsafe(ref p0, t), Vector<float>.Zero);
                a0 = Vector.FusedMultiplyAdd(ps, Vector.LoadUnsafe(ref v0, r0 + t), a0);
                a1 = Vector.FusedMultiplyAdd(ps, Vector.LoadUnsafe(ref v0, r1 + t), a1);
                a2 = Vector.FusedMultiplyAdd(ps, Vector.LoadUnsafe(ref v0, r2 + t), a2);
                a3 = Vector.FusedMultiplyAdd(ps, Vector.LoadUnsafe(ref v0, r3 + t), a3);
            }
            float s0 = Vector.Sum(a0), s1 = Vector.Sum(a1), s2 = Vector.Sum(a2), s3 = Vector.Sum(a3);
            for (int s = n >= vw ? n : blocks; s < n; s++)
            {
                s0 += p[s] * v[(int)r0 + s]; s1 += p[s] * v[(int)r1 + s]; s2 += p[s] * v[(int)r2 + s]; s3 += p[s] * v[(int)r3 + s];
            }
            o[d] = s0 * scale; o[d + 1] = s1 * scale; o[d + 2] = s2 * scale; o[d + 3] = s3 * scale;
        }
        for (; d < hd; d++) o[d] = Dot(p, v.Slice(d * stride, n)) * scale;
    }

    /// <summary>
    /// <see cref="HeadScores"/> for two queries that share one key block (two query heads of a grouped-query kv head):
    /// each key vector is loaded once for both. Every score is computed exactly as <see cref="HeadScores"/> computes it
    /// (the same multiply-add chain over d; the scalar tail past the last full SIMD block the same way), so results do
    /// not depend on which of the two kernels ran. Returns both maxima.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static (float Max0, float Max1) HeadScoresPair(ReadOnlySpan<float> q0, ReadOnlySpan<float> q1, ReadOnlySpan<float> k, int stride, int n,
        Span<float> scores0, Span<float> scores1)
    {
        int hd = q0.Length, vw = Vector<float>.Count;
        if (q1.Length != hd) throw new ArgumentException("queries of different lengths", nameof(q1));
        if (n < 0 || scores0.Length < n || scores1.Length < n) throw new ArgumentOutOfRangeException(nameof(n));
        if (n > 0 && k.Length < (hd - 1) * stride + n) throw new ArgumentException("key block too short", nameof(k));
        if (n > stride) throw new ArgumentOutOfRangeException(nameof(n), "more slots than the block's stride");
        ref float k0 = ref MemoryMarshal.GetReference(k);
        ref float s0 = ref MemoryMarshal.GetReference(scores0);
        ref float s1 = ref MemoryMarshal.GetReference(scores1);
        var m0 = new Vector<float>(float.NegativeInfinity); var m1 = m0;
        int s = 0;
        ref float qa = ref MemoryMarshal.GetReference(q0);
        ref float qb = ref MemoryMarshal.GetReference(q1);
        // Four independent chains (two SIMD blocks of slots x two queries), as HeadScores keeps four; eight (four blocks)
        // measured no faster.
        for (; s + 2 * vw <= n; s += 2 * vw)
        {
            Vector<float> a0 = default, a1 = default, b0 = default, b1 = default;
            nuint at = (nuint)s;
            for (int d = 0; d < hd; d++, at += (nuint)stride)
            {
                var k0v = Vector.LoadUnsafe(ref k0, at); var k1v = Vector.LoadUnsafe(ref k0, at + (nuint)vw);
                var x = new Vector<float>(Unsafe.Add(ref qa, d)); var y = new Vector<float>(Unsafe.Add(ref qb, d));
                a0 = Vector.FusedMultiplyAdd(x, k0v, a0); a1 = Vector.FusedMultiplyAdd(x, k1v, a1);
                b0 = Vector.FusedMultiplyAdd(y, k0v, b0); b1 = Vector.FusedMultiplyAdd(y, k1v, b1);
            }
            a0.StoreUnsafe(ref s0, (nuint)s); a1.StoreUnsafe(ref s0, (nuint)(s + vw));
            b0.StoreUnsafe(ref s1, (nuint)s); b1.StoreUnsafe(ref s1, (nuint)(s + vw));
            m0 = Vector.Max(m0, Vector.Max(a0, a1)); m1 = Vector.Max(m1, Vector.Max(b0, b1));
        }
        for (; s + vw <= n; s += vw)
        {
            Vector<float> a0 = default, b0 = default;
            for (int d = 0; d < hd; d++)
            {
                var kv = Vector.LoadUnsafe(ref k0, (nuint)(d * stride + s));
                a0 = Vector.FusedMultiplyAdd(new Vector<float>(q0[d]), kv, a0);
                b0 = Vector.FusedMultiplyAdd(new Vector<float>(q1[d]), kv, b0);
            }
            a0.StoreUnsafe(ref s0, (nuint)s); b0.StoreUnsafe(ref s1, (nuint)s);
            m0 = Vector.Max(m0, a0); m1 = Vector.Max(m1, b0);
        }
        if (s < n && n >= vw)
        {
            Vector<float> a0 = default, b0 = default;
            for (int d = 0; d < hd; d++)
            {
                var kv = Vector.LoadUnsafe(ref k0, (nuint)(d * stride + n - vw));
                a0 = Vector.FusedMultiplyAdd(new Vector<float>(q0[d]), kv, a0);
                b0 = Vector.FusedMultiplyAdd(new Vector<float>(q1[d]), kv, b0);
            }
            a0.StoreUnsafe(ref s0, (nuint)(n - vw)); b0.StoreUnsafe(ref s1, (nuint)(n - vw));
            m0 = Vector.Max(m0, a0); m1 = Vector.Max(m1, b0);
            s = n;
        }
        float max0 = float.NegativeInfinity, max1 = float.NegativeInfinity;
        for (int j = 0; j < vw; j++) { max0 = MathF.Max(max0, m0[j]); max1 = MathF.Max(max1, m1[j]); }
        for (; s < n; s++)
        {
            float acc0 = 0, acc1 = 0;
            for (int d = 0; d < hd; d++) { float kv = k[d * stride + s]; acc0 += q0[d] * kv; acc1 += q1[d] * kv; }
            scores0[s] = acc0; scores1[s] = acc1;
            max0 = MathF.Max(max0, acc0); max1 = MathF.Max(max1, acc1);
        }
        return (max0, max1);
    }

    /// <summary>
    /// <see cref="HeadWeightedSum"/> for two weight rows over one value block (two query heads of a kv head, the same
    /// number of slots): each value vector is loaded once for both, and every output is summed in the order
    /// <see cref="HeadWeightedSum"/> sums it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void HeadWeightedSumPair(ReadOnlySpan<float> p, ReadOnlySpan<float> p1, ReadOnlySpan<float> v, int stride, float scale, float scale1,
        Span<float> o, Span<float> o1)
    {
        int n = p.Length, hd = o.Length, vw = Vector<float>.Count;
        if (p1.Length != n || o1.Length != hd) throw new ArgumentException("the two rows differ in length", nameof(p1));
        if (n > stride) throw new ArgumentOutOfRangeException(nameof(p), "more slots than the block's stride");
        if (n > 0 && v.Length < (hd - 1) * stride + n) throw new ArgumentException("value block too short", nameof(v));
        ref float v0 = ref MemoryMarshal.GetReference(v);
        ref float pa = ref MemoryMarshal.GetReference(p);
        ref float pb = ref MemoryMarshal.GetReference(p1);
        int blocks = n / vw * vw;
        int d = 0;
        for (; d + 4 <= hd; d += 4)
        {
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            nuint r0 = (nuint)(d * stride), r1 = r0 + (nuint)stride, r2 = r1 + (nuint)stride, r3 = r2 + (nuint)stride;
            for (int s = 0; s < blocks; s += vw)
            {
                var x = Vector.LoadUnsafe(ref pa, (nuint)s); var y = Vector.LoadUnsafe(ref pb, (nuint)s);
                var w0 = Vector.LoadUnsafe(ref v0, r0 + (nuint)s); var w1 = Vector.LoadUnsafe(ref v0, r1 + (nuint)s);
                var w2 = Vector.LoadUnsafe(ref v0, r2 + (nuint)s); var w3 = Vector.LoadUnsafe(ref v0, r3 + (nuint)s);
                a0 = Vector.FusedMultiplyAdd(x, w0, a0); a1 = Vector.FusedMultiplyAdd(x, w1, a1);
                a2 = Vector.FusedMultiplyAdd(x, w2, a2); a3 = Vector.FusedMultiplyAdd(x, w3, a3);
                b0 = Vector.FusedMultiplyAdd(y, w0, b0); b1 = Vector.FusedMultiplyAdd(y, w1, b1);
                b2 = Vector.FusedMultiplyAdd(y, w2, b2); b3 = Vector.FusedMultiplyAdd(y, w3, b3);
            }
            if (blocks < n && n >= vw)
            {
                nuint t = (nuint)(n - vw);
                var fresh = TailLanes(n - blocks);
                var x = Vector.ConditionalSelect(fresh, Vector.LoadUnsafe(ref pa, t), Vector<float>.Zero);
                var y = Vector.ConditionalSelect(fresh, Vector.LoadUnsafe(ref pb, t), Vector<float>.Zero);
                var w0 = Vector.LoadUnsafe(ref v0, r0 + t); var w1 = Vector.LoadUnsafe(ref v0, r1 + t);
                var w2 = Vector.LoadUnsafe(ref v0, r2 + t); var w3 = Vector.LoadUnsafe(ref v0, r3 + t);
                a0 = Vector.FusedMultiplyAdd(x, w0, a0); a1 = Vector.FusedMultiplyAdd(x, w1, a1);
                a2 = Vector.FusedMultiplyAdd(x, w2, a2); a3 = Vector.FusedMultiplyAdd(x, w3, a3);
                b0 = Vector.FusedMultiplyAdd(y, w0, b0); b1 = Vector.FusedMultiplyAdd(y, w1, b1);
                b2 = Vector.FusedMultiplyAdd(y, w2, b2); b3 = Vector.FusedMultiplyAdd(y, w3, b3);
            }
            float s0 = Vector.Sum(a0), s1 = Vector.Sum(a1), s2 = Vector.Sum(a2), s3 = Vector.Sum(a3);
            float t0 = Vector.Sum(b0), t1 = Vector.Sum(b1), t2 = Vector.Sum(b2), t3 = Vector.Sum(b3);
            for (int s = n >= vw ? n : blocks; s < n; s++)
            {
                float x = p[s], y = p1[s];
                float w0 = v[(int)r0 + s], w1 = v[(int)r1 + s], w2 = v[(int)r2 + s], w3 = v[(int)r3 + s];
                s0 += x * w0; s1 += x * w1; s2 += x * w2; s3 += x * w3;
                t0 += y * w0; t1 += y * w1; t2 += y * w2; t3 += y * w3;
            }
            o[d] = s0 * scale; o[d + 1] = s1 * scale; o[d + 2] = s2 * scale; o[d + 3] = s3 * scale;
            o1[d] = t0 * scale1; o1[d + 1] = t1 * scale1; o1[d + 2] = t2 * scale1; o1[d + 3] = t3 * scale1;
        }
        for (; d < hd; d++) { o[d] = Dot(p, v.Slice(d * stride, n)) * scale; o1[d] = Dot(p1, v.Slice(d * stride, n)) * scale1; }
    }

    /// <summary>y += a * x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Axpy(float a, ReadOnlySpan<float> x, Span<float> y)
    {
        int n = y.Length, i = 0;
        var vx = MemoryMarshal.Cast<float, Vector<float>>(x[..n]);
        var vy = MemoryMarshal.Cast<float, Vector<float>>(y);
        var va = new Vector<float>(a);
        for (int k = 0; k < vy.Length; k++) vy[k] += va * vx[k];
        i = vy.Length * Vector<float>.Count;
        for (; i < n; i++) y[i] += a * x[i];
    }

    /// <summary>
    /// y = x · W for W [x.Length, y.Length] row-major (y is overwritten). Register-blocked: eight SIMD accumulators cover
    /// 8 × Vector&lt;float&gt;.Count outputs while the loop walks W's rows, so W is read once and y is written once
    /// (a row-by-row axpy reads and writes y per row: 1.4-5x slower at the draft's sizes, measured). Eight, not four:
    /// each accumulator is a chain of dependent multiply-adds (latency ~4 cycles, two issued per cycle), so four chains
    /// left half the multiply-add throughput idle (measured at the draft's sizes, docs/benchmarks.md).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void MatVec(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> y)
    {
        int rows = x.Length, cols = y.Length, vw = Vector<float>.Count;
        if (w.Length < rows * cols) throw new ArgumentException($"W has {w.Length} elements, expected {rows} x {cols}", nameof(w));
        ref float w0 = ref MemoryMarshal.GetReference(w);
        ref float y0 = ref MemoryMarshal.GetReference(y);
        ref float xr = ref MemoryMarshal.GetReference(x);
        int c = 0;
        for (; c + 8 * vw <= cols; c += 8 * vw)
        {
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            nuint o = (nuint)c;
            for (int i = 0; i < rows; i++, o += (nuint)cols)
            {
                var xi = new Vector<float>(Unsafe.Add(ref xr, i));
                a0 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o), a0);
                a1 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)vw), a1);
                a2 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)(2 * vw)), a2);
                a3 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)(3 * vw)), a3);
                a4 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)(4 * vw)), a4);
                a5 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)(5 * vw)), a5);
                a6 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)(6 * vw)), a6);
                a7 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)(7 * vw)), a7);
            }
            a0.StoreUnsafe(ref y0, (nuint)c); a1.StoreUnsafe(ref y0, (nuint)(c + vw));
            a2.StoreUnsafe(ref y0, (nuint)(c + 2 * vw)); a3.StoreUnsafe(ref y0, (nuint)(c + 3 * vw));
            a4.StoreUnsafe(ref y0, (nuint)(c + 4 * vw)); a5.StoreUnsafe(ref y0, (nuint)(c + 5 * vw));
            a6.StoreUnsafe(ref y0, (nuint)(c + 6 * vw)); a7.StoreUnsafe(ref y0, (nuint)(c + 7 * vw));
        }
        for (; c + 4 * vw <= cols; c += 4 * vw)
        {
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int i = 0; i < rows; i++)
            {
                var xi = new Vector<float>(x[i]);
                nuint o = (nuint)(i * cols + c);
                a0 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o), a0);
                a1 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)vw), a1);
                a2 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)(2 * vw)), a2);
                a3 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)(3 * vw)), a3);
            }
            a0.StoreUnsafe(ref y0, (nuint)c); a1.StoreUnsafe(ref y0, (nuint)(c + vw));
            a2.StoreUnsafe(ref y0, (nuint)(c + 2 * vw)); a3.StoreUnsafe(ref y0, (nuint)(c + 3 * vw));
        }
        if (c + 2 * vw <= cols)
        {
            Vector<float> a0 = default, a1 = default;
            for (int i = 0; i < rows; i++)
            {
                var xi = new Vector<float>(x[i]);
                nuint o = (nuint)(i * cols + c);
                a0 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o), a0);
                a1 = Vector.FusedMultiplyAdd(xi, Vector.LoadUnsafe(ref w0, o + (nuint)vw), a1);
            }
            a0.StoreUnsafe(ref y0, (nuint)c); a1.StoreUnsafe(ref y0, (nuint)(c + vw));
            c += 2 * vw;
        }
        for (; c + vw <= cols; c += vw)
        {
            Vector<float> a = default;
            for (int i = 0; i < rows; i++) a = Vector.FusedMultiplyAdd(new Vector<float>(x[i]), Vector.LoadUnsafe(ref w0, (nuint)(i * cols + c)), a);
            a.StoreUnsafe(ref y0, (nuint)c);
        }
        for (; c < cols; c++)
        {
            float a = 0;
            for (int i = 0; i < rows; i++) a += x[i] * w[i * cols + c];
            y[c] = a;
        }
    }

    /// <summary>
    /// <see cref="MatVec"/> of two vectors over the same W, which is read once for both: y0 = x0 · W, y1 = x1 · W. Every
    /// output is the same chain of multiply-adds over W's rows in order as <see cref="MatVec"/>'s, so each result is
    /// bit-identical to that vector's <see cref="MatVec"/> (what lets sequences draft together and still get exactly
    /// what they get alone). Pays where W does not stay in L1/L2 between two calls (a draft step's matrices).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void MatVecPair(ReadOnlySpan<float> x0, ReadOnlySpan<float> x1, ReadOnlySpan<float> w, Span<float> y0, Span<float> y1)
    {
        int rows = x0.Length, cols = y0.Length, vw = Vector<float>.Count;
        if (x1.Length != rows || y1.Length != cols) throw new ArgumentException("the two vectors differ in length", nameof(x1));
        if (w.Length < rows * cols) throw new ArgumentException($"W has {w.Length} elements, expected {rows} x {cols}", nameof(w));
        ref float w0 = ref MemoryMarshal.GetReference(w);
        ref float ya = ref MemoryMarshal.GetReference(y0);
        ref float yb = ref MemoryMarshal.GetReference(y1);
        ref float xa = ref MemoryMarshal.GetReference(x0);
        ref float xb = ref MemoryMarshal.GetReference(x1);
        int c = 0;
        for (; c + 4 * vw <= cols; c += 4 * vw)
        {
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            nuint o = (nuint)c;
            for (int i = 0; i < rows; i++, o += (nuint)cols)
            {
                var p = new Vector<float>(Unsafe.Add(ref xa, i)); var q = new Vector<float>(Unsafe.Add(ref xb, i));
                var w0v = Vector.LoadUnsafe(ref w0, o); var w1v = Vector.LoadUnsafe(ref w0, o + (nuint)vw);
                var w2v = Vector.LoadUnsafe(ref w0, o + (nuint)(2 * vw)); var w3v = Vector.LoadUnsafe(ref w0, o + (nuint)(3 * vw));
                a0 = Vector.FusedMultiplyAdd(p, w0v, a0); a1 = Vector.FusedMultiplyAdd(p, w1v, a1);
                a2 = Vector.FusedMultiplyAdd(p, w2v, a2); a3 = Vector.FusedMultiplyAdd(p, w3v, a3);
                b0 = Vector.FusedMultiplyAdd(q, w0v, b0); b1 = Vector.FusedMultiplyAdd(q, w1v, b1);
                b2 = Vector.FusedMultiplyAdd(q, w2v, b2); b3 = Vector.FusedMultiplyAdd(q, w3v, b3);
            }
            a0.StoreUnsafe(ref ya, (nuint)c); a1.StoreUnsafe(ref ya, (nuint)(c + vw));
            a2.StoreUnsafe(ref ya, (nuint)(c + 2 * vw)); a3.StoreUnsafe(ref ya, (nuint)(c + 3 * vw));
            b0.StoreUnsafe(ref yb, (nuint)c); b1.StoreUnsafe(ref yb, (nuint)(c + vw));
            b2.StoreUnsafe(ref yb, (nuint)(c + 2 * vw)); b3.StoreUnsafe(ref yb, (nuint)(c + 3 * vw));
        }
        for (; c + vw <= cols; c += vw)
        {
            Vector<float> a = default, b = default;
            for (int i = 0; i < rows; i++)
            {
                var wv = Vector.LoadUnsafe(ref w0, (nuint)(i * cols + c));
                a = Vector.FusedMultiplyAdd(new Vector<float>(x0[i]), wv, a);
                b = Vector.FusedMultiplyAdd(new Vector<float>(x1[i]), wv, b);
            }
            a.StoreUnsafe(ref ya, (nuint)c); b.StoreUnsafe(ref yb, (nuint)c);
        }
        for (; c < cols; c++)
        {
            float a = 0, b = 0;
            for (int i = 0; i < rows; i++) { a += x0[i] * w[i * cols + c]; b += x1[i] * w[i * cols + c]; }
            y0[c] = a; y1[c] = b;
        }
    }

    /// <summary>
    /// <see cref="RowDots"/> of two vectors over the same m, read once for both; each result bit-identical to that
    /// vector's <see cref="RowDots"/> (the same per-row sums in the same order).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RowDotsPair(ReadOnlySpan<float> x0, ReadOnlySpan<float> x1, ReadOnlySpan<float> m, Span<float> y0, Span<float> y1)
    {
        int d = x0.Length, n = y0.Length, vw = Vector<float>.Count;
        if (x1.Length != d || y1.Length != n) throw new ArgumentException("the two vectors differ in length", nameof(x1));
        if (m.Length < n * d) throw new ArgumentException($"m has {m.Length} elements, expected {n} x {d}", nameof(m));
        ref float m0 = ref MemoryMarshal.GetReference(m);
        ref float xa = ref MemoryMarshal.GetReference(x0);
        ref float xb = ref MemoryMarshal.GetReference(x1);
        int r = 0;
        if (d % vw == 0)
        {
            for (; r + 4 <= n; r += 4)
            {
                Vector<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
                nuint o = (nuint)(r * d);
                for (int k = 0; k < d; k += vw)
                {
                    var p = Vector.LoadUnsafe(ref xa, (nuint)k); var q = Vector.LoadUnsafe(ref xb, (nuint)k);
                    var m0v = Vector.LoadUnsafe(ref m0, o + (nuint)k); var m1v = Vector.LoadUnsafe(ref m0, o + (nuint)(d + k));
                    var m2v = Vector.LoadUnsafe(ref m0, o + (nuint)(2 * d + k)); var m3v = Vector.LoadUnsafe(ref m0, o + (nuint)(3 * d + k));
                    a0 = Vector.FusedMultiplyAdd(p, m0v, a0); a1 = Vector.FusedMultiplyAdd(p, m1v, a1);
                    a2 = Vector.FusedMultiplyAdd(p, m2v, a2); a3 = Vector.FusedMultiplyAdd(p, m3v, a3);
                    b0 = Vector.FusedMultiplyAdd(q, m0v, b0); b1 = Vector.FusedMultiplyAdd(q, m1v, b1);
                    b2 = Vector.FusedMultiplyAdd(q, m2v, b2); b3 = Vector.FusedMultiplyAdd(q, m3v, b3);
                }
                y0[r] = Vector.Sum(a0); y0[r + 1] = Vector.Sum(a1); y0[r + 2] = Vector.Sum(a2); y0[r + 3] = Vector.Sum(a3);
                y1[r] = Vector.Sum(b0); y1[r + 1] = Vector.Sum(b1); y1[r + 2] = Vector.Sum(b2); y1[r + 3] = Vector.Sum(b3);
            }
        }
        for (; r < n; r++) { y0[r] = Dot(x0, m.Slice(r * d, d)); y1[r] = Dot(x1, m.Slice(r * d, d)); }
    }

    /// <summary>
    /// y[r] = x · m[r, :] for m [y.Length, x.Length] row-major, four rows at a time (x loaded once per four rows).
    /// For wide outputs such as the LM head this streams m contiguously, which beat <see cref="MatVec"/>'s column
    /// blocks by ~2x at 64 x 512 here (strided rows defeat the prefetcher once W leaves L1).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RowDots(ReadOnlySpan<float> x, ReadOnlySpan<float> m, Span<float> y)
    {
        int d = x.Length, n = y.Length, vw = Vector<float>.Count;
        if (m.Length < n * d) throw new ArgumentException($"m has {m.Length} elements, expected {n} x {d}", nameof(m));
        ref float m0 = ref MemoryMarshal.GetReference(m);
        ref float x0 = ref MemoryMarshal.GetReference(x);
        int r = 0;
        if (d % vw == 0)
        {
            for (; r + 4 <= n; r += 4)
            {
                Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
                nuint b = (nuint)(r * d);
                for (int k = 0; k < d; k += vw)
                {
                    var xv = Vector.LoadUnsafe(ref x0, (nuint)k);
                    a0 = Vector.FusedMultiplyAdd(xv, Vector.LoadUnsafe(ref m0, b + (nuint)k), a0);
                    a1 = Vector.FusedMultiplyAdd(xv, Vector.LoadUnsafe(ref m0, b + (nuint)(d + k)), a1);
                    a2 = Vector.FusedMultiplyAdd(xv, Vector.LoadUnsafe(ref m0, b + (nuint)(2 * d + k)), a2);
                    a3 = Vector.FusedMultiplyAdd(xv, Vector.LoadUnsafe(ref m0, b + (nuint)(3 * d + k)), a3);
                }
                y[r] = Vector.Sum(a0); y[r + 1] = Vector.Sum(a1); y[r + 2] = Vector.Sum(a2); y[r + 3] = Vector.Sum(a3);
            }
        }
        for (; r < n; r++) y[r] = Dot(x, m.Slice(r * d, d));
    }

    /// <summary>out = x / sqrt(mean(x²) + eps) (RMSNorm without weight; the weight is folded into the next matrix).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RmsNorm(ReadOnlySpan<float> x, Span<float> output, float eps)
    {
        float ss = Dot(x, x) / x.Length;
        float r = 1f / MathF.Sqrt(ss + eps);
        for (int i = 0; i < x.Length; i++) output[i] = x[i] * r;
    }

    /// <summary>In-place log-softmax (vectorised: the exp of every logit is most of its cost).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void LogSoftmax(Span<float> v, Span<float> scratch)
    {
        float max = Max(v);
        var e = scratch[..v.Length];
        v.CopyTo(e);
        float lse = max + MathF.Log(ExpShifted(e, max));
        int n = v.Length, vw = Vector<float>.Count, i = 0;
        ref float r = ref MemoryMarshal.GetReference(v);
        var l = new Vector<float>(lse);
        for (; i + vw <= n; i += vw) (Vector.LoadUnsafe(ref r, (nuint)i) - l).StoreUnsafe(ref r, (nuint)i);
        for (; i < n; i++) v[i] -= lse;
    }

    /// <summary>act[j] = silu(gate[j]) * up[j] = gate / (1 + exp(-gate)) * up.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void SwiGlu(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> act)
    {
        int n = act.Length, vw = Vector<float>.Count, i = 0;
        ref float g0 = ref MemoryMarshal.GetReference(gate);
        ref float u0 = ref MemoryMarshal.GetReference(up);
        ref float a0 = ref MemoryMarshal.GetReference(act);
        for (; i + vw <= n; i += vw)
        {
            var g = Vector.LoadUnsafe(ref g0, (nuint)i);
            (g / (Vector<float>.One + Exp(-g)) * Vector.LoadUnsafe(ref u0, (nuint)i)).StoreUnsafe(ref a0, (nuint)i);
        }
        for (; i < n; i++) act[i] = Silu(gate[i]) * up[i];
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Silu(float x) => x / (1f + Exp(-x));

    /// <summary>
    /// The block's tail, shared by both drafts: y = residual + Wo·o, then output = y + W2·(silu(gate) ⊙ up) over
    /// RMSNorm(y) (norm weight folded into W13), then log-softmax logits through the LM-head rows lm [Vd, D].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void OutputAndLogits(ReadOnlySpan<float> o, ReadOnlySpan<float> residual, float[] woT, float[] w13T, float[] w2T, float[] lm,
        float eps, Span<float> output, Span<float> logProbs)
    {
        int d = residual.Length, f = w2T.Length / d;
        Span<float> y = stackalloc float[d];
        Span<float> yn = stackalloc float[d];
        Span<float> gu = stackalloc float[2 * f];
        Span<float> act = stackalloc float[f];
        MatVec(o, woT, y);
        Axpy(1f, residual, y);
        RmsNorm(y, yn, eps);
        MatVec(yn, w13T, gu);
        SwiGlu(gu[..f], gu[f..], act);
        MatVec(act, w2T, output);
        Axpy(1f, y, output);
        RowDots(output, lm, logProbs);
        Span<float> scratch = logProbs.Length <= 4096 ? stackalloc float[logProbs.Length] : new float[logProbs.Length];
        LogSoftmax(logProbs, scratch);
    }

    /// <summary>
    /// <see cref="OutputAndLogits"/> of two draft nodes (of any two sessions of the same draft), each matrix read once
    /// for both; each node's state and log-probs bit-identical to its own <see cref="OutputAndLogits"/> call.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void OutputAndLogitsPair(ReadOnlySpan<float> o0, ReadOnlySpan<float> o1, ReadOnlySpan<float> residual0, ReadOnlySpan<float> residual1,
        float[] woT, float[] w13T, float[] w2T, float[] lm, float eps, Span<float> output0, Span<float> output1, Span<float> logProbs0, Span<float> logProbs1)
    {
        int d = residual0.Length, f = w2T.Length / d;
        Span<float> y0 = stackalloc float[d], y1 = stackalloc float[d];
        Span<float> yn0 = stackalloc float[d], yn1 = stackalloc float[d];
        Span<float> gu0 = stackalloc float[2 * f], gu1 = stackalloc float[2 * f];
        Span<float> act0 = stackalloc float[f], act1 = stackalloc float[f];
        MatVecPair(o0, o1, woT, y0, y1);
        Axpy(1f, residual0, y0); Axpy(1f, residual1, y1);
        RmsNorm(y0, yn0, eps); RmsNorm(y1, yn1, eps);
        MatVecPair(yn0, yn1, w13T, gu0, gu1);
        SwiGlu(gu0[..f], gu0[f..], act0); SwiGlu(gu1[..f], gu1[f..], act1);
        MatVecPair(act0, act1, w2T, output0, output1);
        Axpy(1f, y0, output0); Axpy(1f, y1, output1);
        RowDotsPair(output0, output1, lm, logProbs0, logProbs1);
        Span<float> scratch = logProbs0.Length <= 4096 ? stackalloc float[logProbs0.Length] : new float[logProbs0.Length];
        LogSoftmax(logProbs0, scratch);
        LogSoftmax(logProbs1, scratch);
    }
}
