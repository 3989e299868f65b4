using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;


namespace Beagle.Compute;

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
/// Models/KvCache.cs); slots [0, start) hold the context, the new tokens go to [start, start + T).</item>
/// <item><c>masked</c>: null = causal (token t sees slots ≤ start + t), else the slots each row may not see
/// (<see cref="MaskedSlots"/>, built once per forward from a [T, start + T] mask).</item>
/// <item><c>output</c>: [T, H*hd], head h at columns h*hd (the layout the output projection takes).</item>
/// <item><c>scores</c>: scratch of at least 2·(start + T) floats (two heads' rows).</item>
/// </list>
/// </summary>
internal static class ManagedAttention
{
    /// <summary>The largest number of new tokens routed here.</summary>
    public const int MaxTokens = 32;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(ReadOnlySpan<float> rot, ReadOnlySpan<float> qkv, int qkvStride, int vOffset,
        Span<float> kCache, Span<float> vCache, int capacity, int heads, int kvHeads, int headDim,
        int start, int T, MaskedSlots? masked, Span<float> output, Span<float> scores)
    {
        int hd = headDim, g = heads / kvHeads, S = start + T, rowStride = (heads + kvHeads) * hd;
        // Every unchecked read below stays inside these bounds.
        if (T < 1 || start < 0 || S > capacity) throw new ArgumentOutOfRangeException(nameof(T), $"slots [{start}, {S}) do not fit a cache of {capacity}");
        if (rot.Length < T * rowStride) throw new ArgumentException($"rot has {rot.Length} values, needs {T * rowStride}", nameof(rot));
        if (qkv.Length < (T - 1) * qkvStride + vOffset + kvHeads * hd) throw new ArgumentException("qkv is too short for its values", nameof(qkv));
        if (kCache.Length < kvHeads * hd * capacity || vCache.Length < kvHeads * hd * capacity) throw new ArgumentException("cache layer too short");
        if (output.Length < T * heads * hd) throw new ArgumentException("output too short", nameof(output));
        if (scores.Length < 2 * S) throw new ArgumentException("scores scratch too short (two rows of S)", nameof(scores));
        if (masked is not null && (masked.Rows != T || masked.Slots != S)) throw new ArgumentException($"the mask must be [{T}, {S}], got [{masked.Rows}, {masked.Slots}]", nameof(masked));

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
            // Causal rows see a prefix; masked rows see what their row allows.
            int visible = masked is null ? start + t + 1 : S;
            var hiddenRow = masked is null ? default : masked.Row(t);
            var sc = scores[..visible];
            var sc1 = scores.Slice(S, visible);
            for (int j = 0; j < kvHeads; j++)
            {
                int kvRow = j * hd;                                // first row of this kv head's [hd, capacity] block
                var kBlock = kCache[(kvRow * capacity)..];
                var vBlock = vCache[(kvRow * capacity)..];
                int h = j * g;
                // Query heads of one kv head go in pairs (one pass over the keys and values for both: the kernels are
                // bound by loads and loop overhead at these sizes), a last odd one alone. The pair kernels compute each
                // value exactly as the single ones do, so a head's output does not depend on the grouping.
                for (; h + 2 <= (j + 1) * g; h += 2)
                {
                    var q0 = rot.Slice(t * rowStride + h * hd, hd);  // pre-scaled by 1/sqrt(hd)
                    var q1 = rot.Slice(t * rowStride + (h + 1) * hd, hd);
                    var (max0, max1) = ManagedMath.HeadScoresPair(q0, q1, kBlock, capacity, visible, sc, sc1);
                    if (masked is not null) { max0 = Mask(sc, hiddenRow); max1 = Mask(sc1, hiddenRow); }
                    float inv0 = 1f / ManagedMath.ExpShifted(sc, max0);   // masked entries become exp(-inf) = 0
                    float inv1 = 1f / ManagedMath.ExpShifted(sc1, max1);
                    ManagedMath.HeadWeightedSumPair(sc, sc1, vBlock, capacity, inv0, inv1,
                        output.Slice((t * heads + h) * hd, hd), output.Slice((t * heads + h + 1) * hd, hd));
                }
                for (; h < (j + 1) * g; h++)
                {
                    var q = rot.Slice(t * rowStride + h * hd, hd);
                    float max = ManagedMath.HeadScores(q, kBlock, capacity, visible, sc);
                    if (masked is not null) max = Mask(sc, hiddenRow);
                    float inv = 1f / ManagedMath.ExpShifted(sc, max);
                    ManagedMath.HeadWeightedSum(sc, vBlock, capacity, inv, output.Slice((t * heads + h) * hd, hd));
                }
            }
        }
    }

    /// <summary>Sets the scores of the slots the row may not see to −∞; returns the largest remaining score.</summary>
    static float Mask(Span<float> sc, ReadOnlySpan<int> hiddenSlots)
    {
        foreach (var s in hiddenSlots) sc[s] = float.NegativeInfinity;
        return ManagedMath.Max(sc);
    }
}

/// <summary>
/// The slots each row of a [T, S] attention mask may not see, listed once per forward: every layer's attention then
/// sets just those scores to −∞ (testing the mask slot by slot for every head of every layer was ~10 % of a 16-node
/// tree's rounds, docs/benchmarks.md).
/// </summary>
internal sealed class MaskedSlots
{
    int[] _hidden = [], _start = [];   // row t's hidden slots: _hidden[_start[t] .. _start[t + 1])

    public int Rows { get; private set; }
    public int Slots { get; private set; }

    /// <summary>An empty set, to be filled (and refilled: its arrays are reused, a forward's scratch).</summary>
    public MaskedSlots() { }

    /// <param name="allowed">[rows, slots] row-major, true = may attend.</param>
    public MaskedSlots(ReadOnlySpan<bool> allowed, int rows, int slots) => Fill(allowed, rows, slots);

    /// <param name="allowed">[rows, slots] row-major, true = may attend.</param>
    public MaskedSlots Fill(ReadOnlySpan<bool> allowed, int rows, int slots)
    {
        if (rows < 1 || slots < 1 || allowed.Length != rows * slots) throw new ArgumentException($"allowed must be [{rows}, {slots}], got {allowed.Length} values", nameof(allowed));
        int count = 0;
        foreach (var a in allowed) if (!a) count++;
        Reserve(rows, slots, count);
        for (int t = 0, k = 0; t < rows; t++)
        {
            var row = allowed.Slice(t * slots, slots);
            for (int s = 0; s < slots; s++) if (!row[s]) _hidden[k++] = s;
            _start[t + 1] = k;
        }
        return this;
    }

    /// <summary>
    /// The hidden slots of a tree of T new rows at slots [start, start + T) (<paramref name="parents"/>: -1 for row 0,
    /// else an earlier row): every row sees the committed slots and the slots of its ancestors and itself, the same set
    /// as <see cref="Fill"/> of that tree's [T, start + T] mask, without building the mask.
    /// </summary>
    public MaskedSlots FillTree(ReadOnlySpan<int> parents, int start)
    {
        int T = parents.Length;
        Span<bool> seen = T <= 256 ? stackalloc bool[T] : new bool[T];
        int count = 0;
        for (int t = 0; t < T; t++) { count += T; for (int a = t; a >= 0; a = parents[a]) count--; }
        Reserve(T, start + T, count);
        for (int t = 0, k = 0; t < T; t++)
        {
            seen.Clear();
            for (int a = t; a >= 0; a = parents[a]) seen[a] = true;
            for (int j = 0; j < T; j++) if (!seen[j]) _hidden[k++] = start + j;
            _start[t + 1] = k;
        }
        return this;
    }

    void Reserve(int rows, int slots, int hidden)
    {
        (Rows, Slots) = (rows, slots);
        if (_hidden.Length < hidden) _hidden = new int[hidden];
        if (_start.Length < rows + 1) _start = new int[rows + 1];
        _start[0] = 0;
    }

    public ReadOnlySpan<int> Row(int t) => _hidden.AsSpan(_start[t], _start[t + 1] - _start[t]);
}
