using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Beagle.Decoding;

/// <summary>
/// Turns logits into the sampling distribution (temperature, then top-k, then top-p, as Hugging Face orders them)
/// and draws from it. Plain sampling and speculative acceptance both use <see cref="Distribution"/>, so the
/// distribution the speculative verifier preserves is exactly the one plain sampling draws from. One sampler serves one
/// sequence: it is not thread-safe (neither is its random source), and it reuses its buffers from call to call.
/// </summary>
public sealed class Sampler
{
    readonly SamplingOptions _o;
    readonly Random _rng;

    public Sampler(SamplingOptions options) : this(options, options.Seed is { } s ? new Random(s) : new Random()) { }

    /// <summary>With an explicit random source (tests).</summary>
    public Sampler(SamplingOptions options, Random rng)
    {
        _o = options.Validate();
        _rng = rng;
    }

    public SamplingOptions Options => _o;

    /// <summary>A uniform draw in [0, 1).</summary>
    public double NextUniform() => _rng.NextDouble();

    /// <summary>
    /// The normalised distribution the next token is drawn from (zeros outside top-k / top-p), as a new array the
    /// caller keeps. Decoding uses <see cref="Distribution"/>, the same values in the sampler's own buffer.
    /// </summary>
    public float[] Probabilities(ReadOnlySpan<float> logits) => Distribution(logits).ToArray();

    // Reused by every call: the distribution, the exponentials, the candidates' sort keys and the histogram that finds
    // them. Grown to the vocabulary once.
    float[] _p = [];
    double[] _e = [];
    ulong[] _keys = [];
    readonly int[] _bucketCount = new int[Buckets];
    readonly double[] _bucketMass = new double[Buckets];

    /// <summary>
    /// Histogram buckets of the exponentials e = exp((logit − max) / T), which lie in [0, 1]: 16 per octave from 1 down
    /// to 2^−64, and one more for everything smaller. Bucket b holds e in (2^(−(b+1)/16), 2^(−b/16)] roughly (the top
    /// bits of e's IEEE representation, which order as the values do).
    /// </summary>
    const int Buckets = 64 * 16 + 1;

    static int Bucket(double e) => (int)Math.Min((BitConverter.DoubleToInt64Bits(1.0) - BitConverter.DoubleToInt64Bits(e)) >> 48, Buckets - 1);

    /// <summary>
    /// <see cref="Probabilities"/> into the sampler's own buffer, which the caller may modify (the sampling
    /// acceptance zeroes rejected tokens in it); valid until the next call on this sampler. Allocates nothing once
    /// the buffers have the vocabulary's size.
    /// </summary>
    /// <remarks>
    /// Top-k and top-p keep a prefix of the tokens ordered most likely first (a higher logit first; equal logits, the
    /// lower id first). Sorting the whole vocabulary for every token costs O(V log V) — milliseconds for a 150K
    /// vocabulary — so a histogram of the exponentials finds a threshold above which there are enough tokens (k of
    /// them, or mass p), and only those are sorted. Every token above the threshold precedes every token below it in
    /// that order, so the kept set is the one a full sort gives.
    /// </remarks>
    internal Span<float> Distribution(ReadOnlySpan<float> logits)
    {
        int V = logits.Length;
        if (V == 0) throw new ArgumentException("there are no logits to sample from", nameof(logits));
        var p = Grow(ref _p, V);
        if (_o.IsGreedy) { p.Clear(); p[ArgMax(logits)] = 1f; return p; }

        float max = float.NegativeInfinity;
        foreach (var l in logits) if (l > max) max = l;
        if (!float.IsFinite(max)) throw new InvalidOperationException($"cannot sample: the largest logit is {max} (the model's output is not finite)");
        var e = Grow(ref _e, V);
        double sum = Exponentials(logits, max, _o.Temperature, e);
        if (double.IsNaN(sum)) throw new InvalidOperationException("cannot sample: the logits contain NaN (the model's output is not finite)");

        int topK = _o.TopK > 0 ? Math.Min(_o.TopK, V) : V;
        if (topK == V && _o.TopP >= 1f)
        {
            for (int i = 0; i < V; i++) p[i] = (float)(e[i] / sum);
            return p;
        }

        // The histogram: how many tokens, and how much mass, in each bucket (bucket 0 holds the largest).
        var count = _bucketCount.AsSpan(); var mass = _bucketMass.AsSpan();
        count.Clear(); mass.Clear();
        for (int i = 0; i < V; i++) { int b = Bucket(e[i]); count[b]++; mass[b] += e[i]; }

        // The fewest buckets from the top holding the top-k tokens, or (top-p alone) mass p of the total.
        double target = _o.TopP * sum;
        int last = 0, n = count[0]; double m = mass[0];
        while (last < Buckets - 1 && (topK < V ? n < topK : m < target)) { last++; n += count[last]; m += mass[last]; }

        var keys = Grow(ref _keys, V);
        while (true)
        {
            // The candidates (buckets 0..last), sorted most likely first: a key orders by logit descending, then id.
            int c = 0;
            for (int i = 0; i < V; i++)
                if (Bucket(e[i]) <= last) keys[c++] = ((ulong)~Ascending(logits[i]) << 32) | (uint)i;
            var sorted = keys[..c];
            sorted.Sort();

            int keep = Math.Min(topK, c);
            if (_o.TopP < 1f)
            {
                // Mass p of what top-k kept (of everything, without top-k): the smallest prefix that reaches it.
                double kept = 0;
                if (topK < V) for (int j = 0; j < keep; j++) kept += e[(int)(uint)sorted[j]];
                else kept = sum;
                double cum = 0, goal = _o.TopP * kept; int j2 = 0;
                while (j2 < keep) { cum += e[(int)(uint)sorted[j2]]; j2++; if (cum >= goal) break; }
                // Summed in another order, the histogram's mass can reach p where the sorted walk falls an ulp short:
                // take the next bucket too (at most a few times; the last bucket holds every token).
                if (cum < goal && c < V && last < Buckets - 1) { last++; continue; }
                keep = j2;
            }

            double keptSum = 0;
            for (int j = 0; j < keep; j++) keptSum += e[(int)(uint)sorted[j]];
            p.Clear();
            for (int j = 0; j < keep; j++) { int id = (int)(uint)sorted[j]; p[id] = (float)(e[id] / keptSum); }
            return p;
        }
    }

    /// <summary>
    /// e[i] = exp((logits[i] − max) / T) in double (the argument in float, as the logits are), returning their sum. Eight
    /// at a time where the hardware has vectors: for a 150K vocabulary the exponentials are most of a token's sampling
    /// cost (about 1 ms one at a time).
    /// </summary>
    static double Exponentials(ReadOnlySpan<float> logits, float max, float temperature, Span<double> e)
    {
        int V = logits.Length, i = 0;
        double sum = 0;
        if (Vector256.IsHardwareAccelerated && V >= 8)
        {
            var vmax = Vector256.Create(max); var vt = Vector256.Create(temperature);
            var acc = Vector256<double>.Zero;
            ref float l0 = ref MemoryMarshal.GetReference(logits);
            ref double e0 = ref MemoryMarshal.GetReference(e);
            for (; i + 8 <= V; i += 8)
            {
                var (lo, hi) = Vector256.Widen((Vector256.LoadUnsafe(ref l0, (nuint)i) - vmax) / vt);
                var elo = Vector256.Exp(lo); var ehi = Vector256.Exp(hi);
                elo.StoreUnsafe(ref e0, (nuint)i); ehi.StoreUnsafe(ref e0, (nuint)(i + 4));
                acc += elo + ehi;
            }
            sum = Vector256.Sum(acc);
        }
        for (; i < V; i++) { e[i] = Math.Exp((logits[i] - max) / temperature); sum += e[i]; }
        return sum;
    }

    /// <summary>A float's bits mapped to an unsigned integer that orders as the floats do (−∞ lowest).</summary>
    static uint Ascending(float f)
    {
        uint u = (uint)BitConverter.SingleToInt32Bits(f);
        return (u & 0x8000_0000u) != 0 ? ~u : u | 0x8000_0000u;
    }

    static Span<T> Grow<T>(ref T[] buffer, int n)
    {
        if (buffer.Length < n) buffer = new T[n];
        return buffer.AsSpan(0, n);
    }

    /// <summary>Draws an index from a (not necessarily normalised) non-negative weight vector.</summary>
    public int Draw(ReadOnlySpan<float> weights)
    {
        double total = 0;
        foreach (var w in weights) total += w;
        if (!(total > 0)) throw new InvalidOperationException("cannot sample from an all-zero distribution");
        double u = _rng.NextDouble() * total, cum = 0;
        int last = -1;
        for (int i = 0; i < weights.Length; i++)
        {
            if (weights[i] <= 0) continue;
            cum += weights[i]; last = i;
            if (u < cum) return i;
        }
        return last;   // rounding: u landed on the total
    }

    /// <summary>Chooses the next token from one row of logits.</summary>
    public int Next(ReadOnlySpan<float> logits) => _o.IsGreedy ? ArgMax(logits) : Draw(Distribution(logits));

    /// <summary>Index of the largest value; the lowest index wins ties (as torch.argmax and llama2.c do).</summary>
    public static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
