using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using static TorchSharp.torch;

namespace Beagle.Compute;

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
/// Layout: panel p holds columns [p·16, p·16 + 16) for every k, as [K][16] contiguous floats (the last panel
/// zero-padded), so a kernel reads W strictly sequentially and keeps R x 16 outputs in registers for the whole k
/// loop (<see cref="PackedKernels"/>, generated). With AVX-512 a panel is one vector: up to 12 rows per pass over a
/// panel (12 accumulators), so a verification's rows share each weight load and the panel stays in L1 between row
/// blocks: verifying several tokens costs multiply-adds, not memory traffic. One panel per pass, also for one row:
/// a single sequential stream measured faster than two or four panels at once (scripts/gen-packed-kernels.py). Without AVX-512, two 256-bit vectors per panel, up to
/// 6 rows x 1 panel (12 accumulators of 16 registers).
/// One thread matched or beat MKL's one-thread products up to 4096 rows too (measured), so on the CPU the model keeps
/// only the packed copy and uses it for every forward, long prefills and feature extraction included.
/// </summary>
internal sealed class PackedMatrix
{
    /// <summary>Columns per panel: one AVX-512 vector, two AVX2 vectors.</summary>
    public const int Panel = 16;

    /// <summary>Whether the AVX-512 kernels run (else the 256-bit ones): decided once, by the hardware.</summary>
    static readonly bool Wide = Vector512.IsHardwareAccelerated;

    /// <summary>The most rows one kernel call takes.</summary>
    static int MaxRows => Wide ? 12 : 6;

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
        // The chain's intermediate tensors live in the scope until the copy is done: left to the garbage collector, one
        // could be finalised while a native call still reads it.
        using var scope = NewDisposeScope();
        var host = wT.detach().to(float32).cpu().contiguous();
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
        MultiplySplit(x, n, y, addend);
    }

    /// <summary>
    /// The split product of <see cref="Multiply(float[], int, float[], float[])"/>, apart because its lambda's closure
    /// would otherwise be allocated on every call, split or not (a decoding round makes ~20 products).
    /// </summary>
    void MultiplySplit(float[] x, int n, float[] y, float[]? addend)
        => Split(n, (r0, rows, b0, count) => Multiply(x.AsSpan(r0 * Rows), rows, y.AsSpan(r0 * Cols),
            addend is null ? default : addend.AsSpan(r0 * Cols), b0, count));

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

    /// <summary>
    /// Whether a product of n rows is split over threads: not with one thread, not for few panels with few rows, and not
    /// when the product is too short for a second thread to pay for waking it and waiting for it (tens of µs). Its time
    /// is the longer of streaming the weights (a few rows: memory-bound) and the rows' multiply-adds (compute-bound):
    /// on the 2-core Zen 4 measured, ~60 GB/s from L3 against ~40 GMAC/s, so streaming a weight costs about what
    /// three rows' multiply-adds on it do.
    /// </summary>
    bool Splits(int n)
    {
        int threads = get_num_threads();
        return !(threads <= 1 || (long)Math.Max(n, 3) * Rows * Cols < ParallelWork || (PanelCount < 2 * threads && n < 12));
    }

    /// <summary>Multiply-add equivalents from which a product is split across threads (~0.1 ms of one core's work).</summary>
    const long ParallelWork = 4 << 20;

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
        Span<float> tail = stackalloc float[12 * P];   // the last, partial panel goes through here: kernels write P columns
        int full = N / P;                              // panels with no padding
        for (int b = firstPanel; b < end;)
        {
            if (b >= full) { Tail(ref x0, m, y, tail, b, accumulate); b++; continue; }
            for (int r = 0; r < m;)
            {
                int R = RowBlock(m - r);
                Kernel(R, ref Unsafe.Add(ref x0, r * K), ref _panels[b * K * P], ref Unsafe.Add(ref MemoryMarshal.GetReference(y), r * N + b * P), (nuint)N, accumulate);
                r += R;
            }
            b++;
        }
    }

    /// <summary>R rows of x (row stride K) times the panel at <paramref name="w"/> into y (row stride ld).</summary>
    void Kernel(int R, ref float x, ref float w, ref float y, nuint ld, bool accumulate)
    {
        bool ran = Wide ? PackedKernels.Run512(R, ref x, (nuint)Rows, ref w, ref y, ld, accumulate)
                        : PackedKernels.Run256(R, ref x, (nuint)Rows, ref w, ref y, ld, accumulate);
        if (!ran) throw new InvalidOperationException($"no kernel for {R} rows");
    }

    /// <summary>
    /// Rows taken by the next kernel call when <paramref name="left"/> remain: all of them up to the kernel limit, else
    /// an even split into the fewest calls (16 rows as 8 + 8, not 12 + 4: a pass for few rows costs nearly as much as
    /// one for many, since loads, not multiply-adds, bound it).
    /// </summary>
    static int RowBlock(int left)
    {
        int max = MaxRows;
        if (left <= max) return left;
        int calls = (left + max - 1) / max;
        return (left + calls - 1) / calls;
    }

    /// <summary>All m rows times the partial panel b (its padding columns never reach y): through the tail buffer.</summary>
    void Tail(ref float x0, int m, Span<float> y, Span<float> tail, int b, bool accumulate)
    {
        int K = Rows, N = Cols, P = Panel, c = b * P, width = N - c;
        for (int r = 0; r < m;)
        {
            int R = RowBlock(m - r);
            tail.Clear();
            if (accumulate) for (int i = 0; i < R; i++) y.Slice((r + i) * N + c, width).CopyTo(tail.Slice(i * P, width));
            Kernel(R, ref Unsafe.Add(ref x0, r * K), ref _panels[b * K * P], ref MemoryMarshal.GetReference(tail), (nuint)P, accumulate);
            for (int i = 0; i < R; i++) tail.Slice(i * P, width).CopyTo(y.Slice((r + i) * N + c, width));
            r += R;
        }
    }
}
