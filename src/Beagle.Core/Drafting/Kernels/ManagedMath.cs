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
}
