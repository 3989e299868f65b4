using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Beagle.Drafting.Kernels;

namespace Beagle.Models;

/// <summary>
/// The attention block of a target forward over a few new tokens (decoding and verification), in C# on the CPU:
/// writes the new keys and values into the cache and computes grouped-query attention over it.
///
/// Why: with libtorch, the attention of a small model is ~7 tensor ops per layer (cache writes, the query regrouping,
/// scores, softmax, weighted sum, output regrouping), each a few microseconds of dispatch, and the batched matrix
/// products at [kvH, G*T, S] sizes take MKL's slow small-matrix paths: a 6-token verification spent ~220 µs per
/// forward there against ~90 µs for one token (docs/benchmarks.md, profiling log). The arithmetic is a few hundred
/// thousand multiply-adds, a few microseconds here. The projections and the MLP are <see cref="PackedMatrix"/> products.
/// Used for up to <see cref="MaxTokens"/> new tokens; longer prefills keep libtorch's path (BLAS wins there).
///
/// Layouts (all row-major float32, read and written in place):
/// <list type="bullet">
/// <item><c>rot</c>: [T, H + kvH, hd], the rotated queries (pre-scaled by 1/sqrt(hd)) then keys of each new token.</item>
/// <item><c>qkv</c>: [T, qkvStride], values of token t for kv-head j at column <c>vOffset + j*hd</c>.</item>
/// <item><c>kCache</c>, <c>vCache</c>: one layer of the cache, head-dimension-major [kvH, hd, capacity] (see
/// <see cref="KvCache"/>); slots [0, start) hold the context, the new tokens go to [start, start + T).</item>
/// <item><c>allowed</c>: empty = causal (token t sees slots ≤ start + t), else [T, start + T], true = may attend.</item>
/// <item><c>output</c>: [T, H*hd], head h at columns h*hd (the layout the output projection takes).</item>
/// </list>
/// </summary>
internal static class ManagedAttention
{
    /// <summary>The largest number of new tokens routed here.</summary>
    public const int MaxTokens = 32;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(ReadOnlySpan<float> rot, ReadOnlySpan<float> qkv, int qkvStride, int vOffset,
        Span<float> kCache, Span<float> vCache, int capacity, int heads, int kvHeads, int headDim,
        int start, int T, ReadOnlySpan<bool> allowed, Span<float> output, Span<float> scores)
    {
        int hd = headDim, g = heads / kvHeads, S = start + T, rowStride = (heads + kvHeads) * hd;
        // Every unchecked read below stays inside these bounds.
        if (T < 1 || start < 0 || S > capacity) throw new ArgumentOutOfRangeException(nameof(T), $"slots [{start}, {S}) do not fit a cache of {capacity}");
        if (rot.Length < T * rowStride) throw new ArgumentException($"rot has {rot.Length} values, needs {T * rowStride}", nameof(rot));
        if (qkv.Length < (T - 1) * qkvStride + vOffset + kvHeads * hd) throw new ArgumentException("qkv is too short for its values", nameof(qkv));
        if (kCache.Length < kvHeads * hd * capacity || vCache.Length < kvHeads * hd * capacity) throw new ArgumentException("cache layer too short");
        if (output.Length < T * heads * hd) throw new ArgumentException("output too short", nameof(output));
        if (scores.Length < S) throw new ArgumentException("scores scratch too short", nameof(scores));
        if (!allowed.IsEmpty && allowed.Length != T * S) throw new ArgumentException($"allowed must be [{T}, {S}]", nameof(allowed));

        // New keys and values into their slots (one column of each [hd, capacity] head block).
        for (int t = 0; t < T; t++)
            for (int j = 0; j < kvHeads; j++)
                for (int d = 0; d < hd; d++)
                {
                    int at = (j * hd + d) * capacity + start + t;
                    kCache[at] = rot[t * rowStride + (heads + j) * hd + d];
                    vCache[at] = qkv[t * qkvStride + vOffset + j * hd + d];
                }

        for (int t = 0; t < T; t++)
        {
            // Causal rows see a prefix; masked rows (trees, sliding windows) see what their row allows.
            int visible = allowed.IsEmpty ? start + t + 1 : S;
            var sc = scores[..visible];
            for (int h = 0; h < heads; h++)
            {
                int kvRow = h / g * hd;                            // first row of this head's [hd, capacity] block
                var q = rot.Slice(t * rowStride + h * hd, hd);    // pre-scaled by 1/sqrt(hd)
                var kBlock = kCache[(kvRow * capacity)..];
                float max = ManagedMath.HeadScores(q, kBlock, capacity, visible, sc);
                if (!allowed.IsEmpty)
                {
                    var allowRow = allowed.Slice(t * S, S);
                    max = float.NegativeInfinity;
                    for (int s = 0; s < visible; s++) if (!allowRow[s]) sc[s] = float.NegativeInfinity; else max = MathF.Max(max, sc[s]);
                }
                float inv = 1f / ManagedMath.ExpShifted(sc, max);   // masked entries become exp(-inf) = 0
                ManagedMath.HeadWeightedSum(sc, vCache[(kvRow * capacity)..], capacity, inv, output.Slice((t * heads + h) * hd, hd));
            }
        }
    }
}
