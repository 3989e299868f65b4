using static TorchSharp.torch;

namespace Beagle.Training;

/// <summary>
/// Attention masks of Beagle's two-stage block-attention training (docs/method.md, "Two-stage block-attention training"). All masks are bool,
/// true = may attend, rows = queries, columns = keys.
///
/// Indexing. Positions are 0..T-1; token t_q sits at position q and the true state h_j is the target's top state at j
/// (it predicts t_{j+1}). Beagle's query at position q is e(t_q); its output hhat_q stands in for h_q and predicts
/// t_{q+1}. A sequence is tiled into windows of k positions whose first position p satisfies p ≡ offset (mod k), with
/// offset in [0, k) drawn per batch (positions before the first full window form a partial window). For a query at
/// position q, <c>w</c> = the last position before its window and its offset in the window is i = q - w (1..k).
/// Offset 1 is exactly drafting step 1 (q sees h_{&lt;q}); offset i sees h_{≤w}, like drafting depth i without the
/// draft states of its ancestors.
///
/// Queries whose window starts at position 0 (w &lt; 0) see no key at all. Their rows attend to key 0 only, so that the
/// softmax stays finite, and <see cref="ValidQueries"/> excludes them from every loss.
/// </summary>
public static class Masks
{
    /// <summary>Last position before the window of position <paramref name="q"/> (-1 or less: none).</summary>
    public static int WindowEnd(int q, int k, int offset)
    {
        int r = ((q - offset) % k + k) % k;   // q's index inside its window, 0-based
        return q - r - 1;
    }

    /// <summary>Offset (1..k) of position <paramref name="q"/> inside its window.</summary>
    public static int OffsetInWindow(int q, int k, int offset) => q - WindowEnd(q, k, offset);

    /// <summary>Queries that see at least one true state and so take part in the losses.</summary>
    public static bool[] ValidQueries(int T, int k, int offset)
    {
        Check(T, k, offset);
        var v = new bool[T];
        for (int q = 0; q < T; q++) v[q] = WindowEnd(q, k, offset) >= 0;
        return v;
    }

    /// <summary>
    /// Stage 1, inverse block attention: [T, T]; the query at q sees true states j ≤ w(q).
    /// </summary>
    public static Tensor InverseBlock(int T, int k, int offset, Device? device = null)
    {
        Check(T, k, offset);
        var data = new bool[T * T];
        for (int q = 0; q < T; q++)
        {
            int w = WindowEnd(q, k, offset);
            if (w < 0) { data[q * T] = true; continue; }   // sink row, excluded from the losses
            for (int j = 0; j <= w; j++) data[q * T + j] = true;
        }
        return tensor(data, [T, T], device: device);
    }

    /// <summary>
    /// Stage 2, simulation step <paramref name="step"/> (1..k): [T, 2T] over keys = [true states ; draft-state slots],
    /// slot T+p holding the draft state written at position p. The query at q (offset i) sees true states j ≤ w and the
    /// draft slots at offsets 1..min(step, i)-1 of its own window. At step i only the offset-i query counts (and sees
    /// offsets 1..i-1, exactly as at inference); capping by i keeps every other row causal too (no query ever sees a
    /// slot at or after its own position), which changes nothing that is trained. Step 1 equals <see cref="InverseBlock"/>
    /// padded with T columns of false.
    /// </summary>
    public static Tensor Simulation(int T, int k, int offset, int step, Device? device = null)
    {
        Check(T, k, offset);
        if (step < 1 || step > k) throw new ArgumentOutOfRangeException(nameof(step), step, $"simulation step must be in [1, k={k}]");
        int S = 2 * T;
        var data = new bool[T * S];
        for (int q = 0; q < T; q++)
        {
            int w = WindowEnd(q, k, offset);
            if (w < 0) { data[q * S] = true; continue; }
            for (int j = 0; j <= w; j++) data[q * S + j] = true;
            int i = q - w, last = Math.Min(step, i) - 1;
            for (int o = 1; o <= last; o++) data[q * S + T + w + o] = true;
        }
        return tensor(data, [T, S], device: device);
    }

    /// <summary>Positions whose query has offset <paramref name="step"/> in its window and is valid: the queries that
    /// count at simulation step <paramref name="step"/> and whose outputs are written into the slots.</summary>
    public static long[] PositionsAtOffset(int T, int k, int offset, int step)
    {
        Check(T, k, offset);
        var list = new List<long>();
        for (int q = 0; q < T; q++)
        {
            int w = WindowEnd(q, k, offset);
            if (w >= 0 && q - w == step) list.Add(q);
        }
        return list.ToArray();
    }

    static void Check(int T, int k, int offset)
    {
        if (T < 1) throw new ArgumentOutOfRangeException(nameof(T), T, "sequence length must be positive");
        if (k < 1) throw new ArgumentOutOfRangeException(nameof(k), k, "window size k must be positive");
        if (offset < 0 || offset >= k) throw new ArgumentOutOfRangeException(nameof(offset), offset, $"window offset must be in [0, k={k})");
    }
}
