using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Beagle.Models;

/// <summary>
/// A weight matrix W [K, N] packed once into column panels for the C# products of short forwards (decoding and
/// verification, a few rows) on the CPU: <c>y = addend + x · W</c> for x [M, K] with M small.
///
/// Why: libtorch hands x [M, K] · W to MKL, which re-packs W into panels on every call once M &gt; 1 (profiled: its copy
/// routine <c>sgemm_scopy_down16</c> was ~40 % of all MKL time in a 6-token verification). Packing once at load time
/// and streaming the panels through register-blocked kernels measured, one thread, against <c>mm</c>: stories260K
/// shapes 1.3-2.5x faster at M = 1 and ~2x at M = 6; 110M shapes (768 x 2304 ... 768 x 32000) 1.4x at M = 1 and
/// 2.3-3.3x at M = 6 (docs/benchmarks.md, profiling log). The verification of a draft tree gains most: what speculation needs.
///
/// Layout: panel p holds columns [p·P, p·P + P) for every k, as [K][P] contiguous floats (P = two SIMD vectors; the
/// last panel zero-padded), so a kernel reads W strictly sequentially, and writes M x P outputs per panel from
/// registers. Rows are taken six at a time, the rest in one call of a 1- to 5-row kernel (6 x 2 vectors = 12 accumulators, what 16 AVX2 registers allow).
/// One thread matched or beat MKL's one-thread products up to 4096 rows too (measured), so on the CPU the model keeps
/// only the packed copy and uses it for every forward, long prefills and feature extraction included.
/// </summary>
internal sealed class PackedMatrix
{
    /// <summary>Columns per panel: two SIMD vectors (16 floats with AVX2).</summary>
    public static readonly int Panel = 2 * Vector<float>.Count;

    readonly float[] _panels;   // [ceil(N / P)][K][P]

    /// <summary>K: the input size.</summary>
    public int Rows { get; }
    /// <summary>N: the output size.</summary>
    public int Cols { get; }

    /// <param name="w">W [rows, cols] row-major (e.g. a transposed nn.Linear weight).</param>
    public PackedMatrix(ReadOnlySpan<float> w, int rows, int cols)
    {
        if (rows <= 0 || cols <= 0) throw new ArgumentOutOfRangeException(nameof(rows), $"matrix must be non-empty, got [{rows}, {cols}]");
        if (w.Length != rows * cols) throw new ArgumentException($"W has {w.Length} values, expected {rows} x {cols}", nameof(w));
        (Rows, Cols) = (rows, cols);
        int p = Panel, np = (cols + p - 1) / p;
        _panels = new float[np * rows * p];
        for (int b = 0; b < np; b++)
            for (int k = 0; k < rows; k++)
            {
                int c0 = b * p, n = Math.Min(p, cols - c0);
                w.Slice(k * cols + c0, n).CopyTo(_panels.AsSpan((b * rows + k) * p, n));
            }
    }

    /// <summary>Packs W [K, N] held in a tensor (any layout, dtype or device; copied to contiguous float32 on the host first).</summary>
    public static PackedMatrix FromTensor(Tensor wT)
    {
        using var host = wT.detach().to(float32).cpu().contiguous();
        return new PackedMatrix(Floats(host), (int)host.shape[0], (int)host.shape[1]);
    }

    /// <summary>A contiguous float32 CPU tensor's memory, in place.</summary>
    static Span<float> Floats(Tensor t) => MemoryMarshal.Cast<byte, float>(t.bytes);

    /// <summary>
    /// (addend or bias rows +) x · W for x [n, K] (CPU): a new tensor [n, N]. <paramref name="bias"/> [N] is added to every
    /// row (then <paramref name="addend"/> must be null).
    /// </summary>
    public Tensor Linear(Tensor x, int n, Tensor? addend = null, float[]? bias = null)
    {
        if (bias is not null && addend is not null) throw new ArgumentException("pass a bias or an addend, not both", nameof(bias));
        var y = empty(n, Cols);
        if (bias is not null)
        {
            if (bias.Length != Cols) throw new ArgumentException($"bias has {bias.Length} values, expected {Cols}", nameof(bias));
            var ys = Floats(y);
            for (int i = 0; i < n; i++) bias.CopyTo(ys.Slice(i * Cols, Cols));
            addend = y;
        }
        Multiply(x, n, y, addend);
        return y;
    }

    /// <summary>
    /// y = addend + x · W with CPU tensors x [n, K], y and addend [n, N] (addend may be y itself, or null). Large products
    /// are split over the torch thread count, as libtorch's own products would use those threads: by column panels
    /// (every row count, e.g. one-token decoding of a large model, where the weights dominate), or by rows when there
    /// are too few panels. Each output's sum runs in the same order either way, so the split changes no bit.
    /// </summary>
    public void Multiply(Tensor x, int n, Tensor y, Tensor? addend)
    {
        if (!x.is_contiguous()) x = x.contiguous();   // Floats reads raw memory: rows must be dense
        if (addend is not null && !ReferenceEquals(addend, y) && !addend.is_contiguous()) addend = addend.contiguous();
        if (!Splits(n)) { Multiply(Floats(x), n, Floats(y), addend is null ? default : Floats(addend)); return; }
        // Spans cannot be captured by the parallel parts, so each part takes them from the tensors again.
        Split(n, (r0, rows, b0, count) => Multiply(Floats(x)[(r0 * Rows)..], rows, Floats(y)[(r0 * Cols)..],
            addend is null ? default : Floats(addend)[(r0 * Cols)..], b0, count));
    }

    /// <summary>
    /// The same on arrays: y = addend + x · W, x [n, K], y and addend [n, N] (addend may be y itself, for a residual
    /// added in place, or null). The CPU forward's intermediates live in pooled arrays (no tensor per product).
    /// </summary>
    public void Multiply(float[] x, int n, float[] y, float[]? addend)
    {
        if (x.Length < n * Rows) throw new ArgumentException($"x has {x.Length} values, needs {n} x {Rows}", nameof(x));
        if (!Splits(n)) { Multiply(x, n, y.AsSpan(), addend); return; }
        Split(n, (r0, rows, b0, count) => Multiply(x.AsSpan(r0 * Rows), rows, y.AsSpan(r0 * Cols),
            addend is null ? default : addend.AsSpan(r0 * Cols), b0, count));
    }

    /// <summary>
    /// Runs <paramref name="part"/>(first row, rows, first panel, panels) over the whole product: in one call, or split over
    /// the torch thread count for large products — by column panels (every row count, e.g. one-token decoding of a large
    /// model, where the weights dominate), or by rows when there are too few panels. Each output's sum runs in the same
    /// order either way, so the split changes no bit.
    /// </summary>
    void Split(int n, Action<int, int, int, int> part)
    {
        int threads = get_num_threads(), np = PanelCount;
        if (!Splits(n))
        {
            part(0, n, 0, np);
            return;
        }
        if (np >= 2 * threads)
        {
            int per = (np + threads - 1) / threads;
            Parallel.For(0, threads, p =>
            {
                int b0 = p * per, count = Math.Min(per, np - b0);
                if (count > 0) part(0, n, b0, count);
            });
            return;
        }
        int rowParts = Math.Min(threads, n / 6), rowsPer = (n + rowParts - 1) / rowParts;
        Parallel.For(0, rowParts, p =>
        {
            int r0 = p * rowsPer, rows = Math.Min(rowsPer, n - r0);
            if (rows > 0) part(r0, rows, 0, np);
        });
    }

    /// <summary>Whether a product of n rows is split over threads (one thread, small products and few panels with few rows are not).</summary>
    bool Splits(int n)
    {
        int threads = get_num_threads();
        return !(threads <= 1 || (long)n * Rows * Cols < ParallelWork || (PanelCount < 2 * threads && n < 12));
    }

    /// <summary>Multiply-adds from which a product is split across threads (~0.3 ms of one core's work).</summary>
    const long ParallelWork = 1 << 20;

    /// <summary>W's float count as packed (for memory accounting).</summary>
    public long PackedFloats => _panels.LongLength;

    /// <summary>Number of column panels (units in which a product can be split across threads).</summary>
    public int PanelCount => (Cols + Panel - 1) / Panel;

    /// <summary>
    /// y [m, N] = addend [m, N] + x [m, K] · W, row-major. <paramref name="addend"/> may be empty (zero) or the same
    /// memory as <paramref name="y"/> (accumulate in place); otherwise it must not overlap y.
    /// <paramref name="firstPanel"/> and <paramref name="panels"/> restrict the work to those column panels (and
    /// their columns of y), so that threads can share one product; default: all.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Multiply(ReadOnlySpan<float> x, int m, Span<float> y, ReadOnlySpan<float> addend = default, int firstPanel = 0, int panels = -1)
    {
        int K = Rows, N = Cols, P = Panel;
        // Every unchecked access below stays inside these bounds.
        if (m <= 0) throw new ArgumentOutOfRangeException(nameof(m), m, "need at least one row");
        if (x.Length < m * K) throw new ArgumentException($"x has {x.Length} values, needs {m} x {K}", nameof(x));
        if (y.Length < m * N) throw new ArgumentException($"y has {y.Length} values, needs {m} x {N}", nameof(y));
        int np = PanelCount, end = panels < 0 ? np : firstPanel + panels;
        if (firstPanel < 0 || end > np || end < firstPanel) throw new ArgumentOutOfRangeException(nameof(panels), $"panels [{firstPanel}, {end}) outside [0, {np})");
        bool accumulate = !addend.IsEmpty;
        if (accumulate)
        {
            if (addend.Length < m * N) throw new ArgumentException($"addend has {addend.Length} values, needs {m} x {N}", nameof(addend));
            if (!Unsafe.AreSame(ref MemoryMarshal.GetReference(addend), ref MemoryMarshal.GetReference(y)))
            {
                if (firstPanel == 0 && end == np) addend[..(m * N)].CopyTo(y);
                else
                {
                    int c0 = firstPanel * P, width = Math.Min(end * P, N) - c0;
                    for (int r = 0; r < m; r++) addend.Slice(r * N + c0, width).CopyTo(y.Slice(r * N + c0, width));
                }
            }
        }

        ref float x0 = ref MemoryMarshal.GetReference(x);
        ref float y0 = ref MemoryMarshal.GetReference(y);
        Span<float> tail = stackalloc float[6 * P];   // the last, partial panel goes through here: kernels write P columns
        for (int b = firstPanel; b < end;)
        {
            // A single row takes two full panels at once (four accumulator chains instead of two: it is the one-token
            // decoding case, where the chains' latency, not the loads, would set the pace).
            bool pair = b + 1 < end && (b + 2) * P <= N;
            for (int r = 0; r < m;)
            {
                int R = RowBlock(m - r);
                if (R == 1 && pair)
                    Rows1Pair(ref Unsafe.Add(ref x0, r * K), K, ref _panels[b * K * P], ref Unsafe.Add(ref y0, r * N + b * P), accumulate);
                else
                    for (int bb = b; bb < (pair ? b + 2 : b + 1); bb++) Block(x0: ref x0, y, tail, bb, r, R, accumulate);
                r += R;
            }
            b += pair ? 2 : 1;
        }
    }

    /// <summary>
    /// Rows taken by the next kernel call when <paramref name="left"/> remain: six at a time, the rest in one call, 7 as
    /// 4 + 3 and 8 as 4 + 4. Each call is a pass over the panel, and a pass for one or two rows costs nearly as much as
    /// one for four (loads, not multiply-adds, bound it), so a lone remainder row is avoided: 110M shapes, 768 x 2304,
    /// µs per product: 3 rows 261 → 161 (was 2 + 1), 5 rows 277 → 212 (was 4 + 1), 9 rows 508 → 401 (was 6 + 2 + 1).
    /// </summary>
    static int RowBlock(int left) => left is 7 or 8 ? 4 : Math.Min(left, 6);

    /// <summary>R rows starting at row r, times panel b, into y (through <paramref name="tail"/> when the panel is partial).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    void Block(ref float x0, Span<float> y, Span<float> tail, int b, int r, int R, bool accumulate)
    {
        int K = Rows, N = Cols, P = Panel;
        ref float w = ref _panels[b * K * P];
        int c = b * P, width = Math.Min(P, N - c);
        ref float xr = ref Unsafe.Add(ref x0, r * K);
        scoped ref float dst = ref Unsafe.Add(ref MemoryMarshal.GetReference(y), r * N + c);
        int ld = N;
        if (width < P)
        {
            tail.Clear();
            if (accumulate) for (int i = 0; i < R; i++) y.Slice((r + i) * N + c, width).CopyTo(tail.Slice(i * P, width));
            dst = ref MemoryMarshal.GetReference(tail); ld = P;
        }
        switch (R)
        {
            case 6: Rows6(ref xr, K, ref w, ref dst, ld, accumulate); break;
            case 5: Rows5(ref xr, K, ref w, ref dst, ld, accumulate); break;
            case 4: Rows4(ref xr, K, ref w, ref dst, ld, accumulate); break;
            case 3: Rows3(ref xr, K, ref w, ref dst, ld, accumulate); break;
            case 2: Rows2(ref xr, K, ref w, ref dst, ld, accumulate); break;
            default: Rows1(ref xr, K, ref w, ref dst, accumulate); break;
        }
        if (width < P) for (int i = 0; i < R; i++) tail.Slice(i * P, width).CopyTo(y.Slice((r + i) * N + c, width));
    }

    // The kernels: R rows of x times one panel (K x P) into R x P outputs at y (row stride ld), two vectors per row.
    // Every kernel sums each output over k in the same order (one fused multiply-add per k, from the addend or zero),
    // so a row's result does not depend on how many rows share the call or which block it falls in: a token's logits
    // are bit-identical whether it is decoded alone or verified among others, and across thread splits. (Splitting
    // the k sum over two accumulators for R = 1, 2 broke that and measured no faster.)

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector<float> Init(bool accumulate, ref float y, nuint at) => accumulate ? Vector.LoadUnsafe(ref y, at) : default;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Rows6(ref float x, int K, ref float w, ref float y, int ld, bool acc)
    {
        nuint v = (nuint)Vector<float>.Count, l = (nuint)ld, P = 2 * v;
        Vector<float> a00 = Init(acc, ref y, 0), a01 = Init(acc, ref y, v), a10 = Init(acc, ref y, l), a11 = Init(acc, ref y, l + v),
            a20 = Init(acc, ref y, 2 * l), a21 = Init(acc, ref y, 2 * l + v), a30 = Init(acc, ref y, 3 * l), a31 = Init(acc, ref y, 3 * l + v),
            a40 = Init(acc, ref y, 4 * l), a41 = Init(acc, ref y, 4 * l + v), a50 = Init(acc, ref y, 5 * l), a51 = Init(acc, ref y, 5 * l + v);
        nuint k1 = (nuint)K;
        for (nuint k = 0; k < k1; k++)
        {
            var b0 = Vector.LoadUnsafe(ref w, k * P); var b1 = Vector.LoadUnsafe(ref w, k * P + v);
            var xv = new Vector<float>(Unsafe.Add(ref x, k)); a00 = Vector.FusedMultiplyAdd(xv, b0, a00); a01 = Vector.FusedMultiplyAdd(xv, b1, a01);
            xv = new Vector<float>(Unsafe.Add(ref x, k1 + k)); a10 = Vector.FusedMultiplyAdd(xv, b0, a10); a11 = Vector.FusedMultiplyAdd(xv, b1, a11);
            xv = new Vector<float>(Unsafe.Add(ref x, 2 * k1 + k)); a20 = Vector.FusedMultiplyAdd(xv, b0, a20); a21 = Vector.FusedMultiplyAdd(xv, b1, a21);
            xv = new Vector<float>(Unsafe.Add(ref x, 3 * k1 + k)); a30 = Vector.FusedMultiplyAdd(xv, b0, a30); a31 = Vector.FusedMultiplyAdd(xv, b1, a31);
            xv = new Vector<float>(Unsafe.Add(ref x, 4 * k1 + k)); a40 = Vector.FusedMultiplyAdd(xv, b0, a40); a41 = Vector.FusedMultiplyAdd(xv, b1, a41);
            xv = new Vector<float>(Unsafe.Add(ref x, 5 * k1 + k)); a50 = Vector.FusedMultiplyAdd(xv, b0, a50); a51 = Vector.FusedMultiplyAdd(xv, b1, a51);
        }
        a00.StoreUnsafe(ref y, 0); a01.StoreUnsafe(ref y, v);
        a10.StoreUnsafe(ref y, l); a11.StoreUnsafe(ref y, l + v);
        a20.StoreUnsafe(ref y, 2 * l); a21.StoreUnsafe(ref y, 2 * l + v);
        a30.StoreUnsafe(ref y, 3 * l); a31.StoreUnsafe(ref y, 3 * l + v);
        a40.StoreUnsafe(ref y, 4 * l); a41.StoreUnsafe(ref y, 4 * l + v);
        a50.StoreUnsafe(ref y, 5 * l); a51.StoreUnsafe(ref y, 5 * l + v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Rows5(ref float x, int K, ref float w, ref float y, int ld, bool acc)
    {
        nuint v = (nuint)Vector<float>.Count, l = (nuint)ld, P = 2 * v;
        Vector<float> a00 = Init(acc, ref y, 0), a01 = Init(acc, ref y, v), a10 = Init(acc, ref y, l), a11 = Init(acc, ref y, l + v),
            a20 = Init(acc, ref y, 2 * l), a21 = Init(acc, ref y, 2 * l + v), a30 = Init(acc, ref y, 3 * l), a31 = Init(acc, ref y, 3 * l + v),
            a40 = Init(acc, ref y, 4 * l), a41 = Init(acc, ref y, 4 * l + v);
        nuint k1 = (nuint)K;
        for (nuint k = 0; k < k1; k++)
        {
            var b0 = Vector.LoadUnsafe(ref w, k * P); var b1 = Vector.LoadUnsafe(ref w, k * P + v);
            var xv = new Vector<float>(Unsafe.Add(ref x, k)); a00 = Vector.FusedMultiplyAdd(xv, b0, a00); a01 = Vector.FusedMultiplyAdd(xv, b1, a01);
            xv = new Vector<float>(Unsafe.Add(ref x, k1 + k)); a10 = Vector.FusedMultiplyAdd(xv, b0, a10); a11 = Vector.FusedMultiplyAdd(xv, b1, a11);
            xv = new Vector<float>(Unsafe.Add(ref x, 2 * k1 + k)); a20 = Vector.FusedMultiplyAdd(xv, b0, a20); a21 = Vector.FusedMultiplyAdd(xv, b1, a21);
            xv = new Vector<float>(Unsafe.Add(ref x, 3 * k1 + k)); a30 = Vector.FusedMultiplyAdd(xv, b0, a30); a31 = Vector.FusedMultiplyAdd(xv, b1, a31);
            xv = new Vector<float>(Unsafe.Add(ref x, 4 * k1 + k)); a40 = Vector.FusedMultiplyAdd(xv, b0, a40); a41 = Vector.FusedMultiplyAdd(xv, b1, a41);
        }
        a00.StoreUnsafe(ref y, 0); a01.StoreUnsafe(ref y, v);
        a10.StoreUnsafe(ref y, l); a11.StoreUnsafe(ref y, l + v);
        a20.StoreUnsafe(ref y, 2 * l); a21.StoreUnsafe(ref y, 2 * l + v);
        a30.StoreUnsafe(ref y, 3 * l); a31.StoreUnsafe(ref y, 3 * l + v);
        a40.StoreUnsafe(ref y, 4 * l); a41.StoreUnsafe(ref y, 4 * l + v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Rows3(ref float x, int K, ref float w, ref float y, int ld, bool acc)
    {
        nuint v = (nuint)Vector<float>.Count, l = (nuint)ld, P = 2 * v;
        Vector<float> a00 = Init(acc, ref y, 0), a01 = Init(acc, ref y, v), a10 = Init(acc, ref y, l), a11 = Init(acc, ref y, l + v),
            a20 = Init(acc, ref y, 2 * l), a21 = Init(acc, ref y, 2 * l + v);
        nuint k1 = (nuint)K;
        for (nuint k = 0; k < k1; k++)
        {
            var b0 = Vector.LoadUnsafe(ref w, k * P); var b1 = Vector.LoadUnsafe(ref w, k * P + v);
            var xv = new Vector<float>(Unsafe.Add(ref x, k)); a00 = Vector.FusedMultiplyAdd(xv, b0, a00); a01 = Vector.FusedMultiplyAdd(xv, b1, a01);
            xv = new Vector<float>(Unsafe.Add(ref x, k1 + k)); a10 = Vector.FusedMultiplyAdd(xv, b0, a10); a11 = Vector.FusedMultiplyAdd(xv, b1, a11);
            xv = new Vector<float>(Unsafe.Add(ref x, 2 * k1 + k)); a20 = Vector.FusedMultiplyAdd(xv, b0, a20); a21 = Vector.FusedMultiplyAdd(xv, b1, a21);
        }
        a00.StoreUnsafe(ref y, 0); a01.StoreUnsafe(ref y, v);
        a10.StoreUnsafe(ref y, l); a11.StoreUnsafe(ref y, l + v);
        a20.StoreUnsafe(ref y, 2 * l); a21.StoreUnsafe(ref y, 2 * l + v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Rows4(ref float x, int K, ref float w, ref float y, int ld, bool acc)
    {
        nuint v = (nuint)Vector<float>.Count, l = (nuint)ld, P = 2 * v;
        Vector<float> a00 = Init(acc, ref y, 0), a01 = Init(acc, ref y, v), a10 = Init(acc, ref y, l), a11 = Init(acc, ref y, l + v),
            a20 = Init(acc, ref y, 2 * l), a21 = Init(acc, ref y, 2 * l + v), a30 = Init(acc, ref y, 3 * l), a31 = Init(acc, ref y, 3 * l + v);
        nuint k1 = (nuint)K;
        for (nuint k = 0; k < k1; k++)
        {
            var b0 = Vector.LoadUnsafe(ref w, k * P); var b1 = Vector.LoadUnsafe(ref w, k * P + v);
            var xv = new Vector<float>(Unsafe.Add(ref x, k)); a00 = Vector.FusedMultiplyAdd(xv, b0, a00); a01 = Vector.FusedMultiplyAdd(xv, b1, a01);
            xv = new Vector<float>(Unsafe.Add(ref x, k1 + k)); a10 = Vector.FusedMultiplyAdd(xv, b0, a10); a11 = Vector.FusedMultiplyAdd(xv, b1, a11);
            xv = new Vector<float>(Unsafe.Add(ref x, 2 * k1 + k)); a20 = Vector.FusedMultiplyAdd(xv, b0, a20); a21 = Vector.FusedMultiplyAdd(xv, b1, a21);
            xv = new Vector<float>(Unsafe.Add(ref x, 3 * k1 + k)); a30 = Vector.FusedMultiplyAdd(xv, b0, a30); a31 = Vector.FusedMultiplyAdd(xv, b1, a31);
        }
        a00.StoreUnsafe(ref y, 0); a01.StoreUnsafe(ref y, v);
        a10.StoreUnsafe(ref y, l); a11.StoreUnsafe(ref y, l + v);
        a20.StoreUnsafe(ref y, 2 * l); a21.StoreUnsafe(ref y, 2 * l + v);
        a30.StoreUnsafe(ref y, 3 * l); a31.StoreUnsafe(ref y, 3 * l + v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Rows2(ref float x, int K, ref float w, ref float y, int ld, bool acc)
    {
        nuint v = (nuint)Vector<float>.Count, l = (nuint)ld, P = 2 * v;
        Vector<float> a00 = Init(acc, ref y, 0), a01 = Init(acc, ref y, v), a10 = Init(acc, ref y, l), a11 = Init(acc, ref y, l + v);
        nuint k1 = (nuint)K;
        for (nuint k = 0; k < k1; k++)
        {
            var b0 = Vector.LoadUnsafe(ref w, k * P); var b1 = Vector.LoadUnsafe(ref w, k * P + v);
            var xv = new Vector<float>(Unsafe.Add(ref x, k)); a00 = Vector.FusedMultiplyAdd(xv, b0, a00); a01 = Vector.FusedMultiplyAdd(xv, b1, a01);
            xv = new Vector<float>(Unsafe.Add(ref x, k1 + k)); a10 = Vector.FusedMultiplyAdd(xv, b0, a10); a11 = Vector.FusedMultiplyAdd(xv, b1, a11);
        }
        a00.StoreUnsafe(ref y, 0); a01.StoreUnsafe(ref y, v);
        a10.StoreUnsafe(ref y, l); a11.StoreUnsafe(ref y, l + v);
    }

    /// <summary>One row times two adjacent full panels (w: the first; the second follows it) into 2P outputs.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Rows1Pair(ref float x, int K, ref float w, ref float y, bool acc)
    {
        nuint v = (nuint)Vector<float>.Count, P = 2 * v, second = (nuint)K * P;
        Vector<float> a0 = Init(acc, ref y, 0), a1 = Init(acc, ref y, v), a2 = Init(acc, ref y, P), a3 = Init(acc, ref y, P + v);
        nuint k1 = (nuint)K;
        for (nuint k = 0; k < k1; k++)
        {
            var xv = new Vector<float>(Unsafe.Add(ref x, k));
            a0 = Vector.FusedMultiplyAdd(xv, Vector.LoadUnsafe(ref w, k * P), a0); a1 = Vector.FusedMultiplyAdd(xv, Vector.LoadUnsafe(ref w, k * P + v), a1);
            a2 = Vector.FusedMultiplyAdd(xv, Vector.LoadUnsafe(ref w, second + k * P), a2); a3 = Vector.FusedMultiplyAdd(xv, Vector.LoadUnsafe(ref w, second + k * P + v), a3);
        }
        a0.StoreUnsafe(ref y, 0); a1.StoreUnsafe(ref y, v); a2.StoreUnsafe(ref y, P); a3.StoreUnsafe(ref y, P + v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Rows1(ref float x, int K, ref float w, ref float y, bool acc)
    {
        nuint v = (nuint)Vector<float>.Count, P = 2 * v;
        Vector<float> a0 = Init(acc, ref y, 0), a1 = Init(acc, ref y, v);
        nuint k1 = (nuint)K;
        for (nuint k = 0; k < k1; k++)
        {
            var xv = new Vector<float>(Unsafe.Add(ref x, k));
            a0 = Vector.FusedMultiplyAdd(xv, Vector.LoadUnsafe(ref w, k * P), a0); a1 = Vector.FusedMultiplyAdd(xv, Vector.LoadUnsafe(ref w, k * P + v), a1);
        }
        a0.StoreUnsafe(ref y, 0); a1.StoreUnsafe(ref y, v);
    }
}
