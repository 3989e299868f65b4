using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Beagle.Drafting.Kernels;

/// <summary>Small SIMD helpers (System.Numerics.Vector) for the managed draft kernel: row-major float spans.</summary>
/// Hot paths are compiled fully optimised at once (AggressiveOptimization): tier-0 code for Vector&lt;T&gt; is many times
/// slower, and a generation is over before tiering would promote it (measured: the kernel ran slower than tensors without it).
internal static class ManagedMath
{
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

    /// <summary>y = x · W for W [x.Length, y.Length] row-major (y is overwritten).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void MatVec(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> y)
    {
        y.Clear();
        int cols = y.Length;
        for (int i = 0; i < x.Length; i++)
            if (x[i] != 0f) Axpy(x[i], w.Slice(i * cols, cols), y);
    }

    /// <summary>out = x / sqrt(mean(x²) + eps) (RMSNorm without weight; the weight is folded into the next matrix).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RmsNorm(ReadOnlySpan<float> x, Span<float> output, float eps)
    {
        float ss = Dot(x, x) / x.Length;
        float r = 1f / MathF.Sqrt(ss + eps);
        for (int i = 0; i < x.Length; i++) output[i] = x[i] * r;
    }

    /// <summary>In-place log-softmax.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void LogSoftmax(Span<float> v)
    {
        float max = float.NegativeInfinity;
        foreach (var x in v) if (x > max) max = x;
        double sum = 0;
        foreach (var x in v) sum += Math.Exp(x - max);
        float lse = max + (float)Math.Log(sum);
        for (int i = 0; i < v.Length; i++) v[i] -= lse;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float Silu(float x) => x / (1f + MathF.Exp(-x));

    /// <summary>
    /// Grouped-query attention of one query row over the listed key slots. q: [heads * hd]; kc, vc: slot-major
    /// [slots, kvDim] with kvDim = kvHeads * hd; output o: [heads * hd]; scores: scratch of at least keys.Count.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Attend(ReadOnlySpan<float> q, List<int> keys, float[] kc, float[] vc, int kvDim, int groupSize, int hd, float scale,
        Span<float> scores, Span<float> o)
    {
        int heads = q.Length / hd;
        for (int head = 0; head < heads; head++)
        {
            int off = (head / groupSize) * hd;
            var qh = q.Slice(head * hd, hd);
            float max = float.NegativeInfinity;
            for (int s = 0; s < keys.Count; s++)
            {
                float sc = Dot(qh, kc.AsSpan(keys[s] * kvDim + off, hd)) * scale;
                scores[s] = sc; if (sc > max) max = sc;
            }
            float sum = 0;
            for (int s = 0; s < keys.Count; s++) { scores[s] = MathF.Exp(scores[s] - max); sum += scores[s]; }
            var oh = o.Slice(head * hd, hd);
            oh.Clear();
            for (int s = 0; s < keys.Count; s++) Axpy(scores[s] / sum, vc.AsSpan(keys[s] * kvDim + off, hd), oh);
        }
    }

    /// <summary>
    /// The block's tail, shared by both drafts: y = residual + Wo·o, then output = y + W2·(silu(gate) ⊙ up) over
    /// RMSNorm(y) (norm weight folded into W13), then log-softmax logits over the LM-head rows.
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
        for (int j = 0; j < f; j++) act[j] = Silu(gu[j]) * gu[f + j];
        MatVec(act, w2T, output);
        Axpy(1f, y, output);
        for (int v = 0; v < logProbs.Length; v++) logProbs[v] = Dot(output, lm.AsSpan(v * d, d));
        LogSoftmax(logProbs);
    }
}
