namespace Beagle.Decoding;

/// <summary>
/// Turns logits into the sampling distribution (temperature, then top-k, then top-p, as Hugging Face orders them)
/// and draws from it. Plain sampling and speculative acceptance both use <see cref="Probabilities"/>, so the
/// distribution the speculative verifier preserves is exactly the one plain sampling draws from.
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

    /// <summary>The normalised distribution the next token is drawn from (zeros outside top-k / top-p).</summary>
    public float[] Probabilities(ReadOnlySpan<float> logits)
    {
        int V = logits.Length;
        var p = new float[V];
        if (_o.IsGreedy) { p[ArgMax(logits)] = 1f; return p; }
        float max = float.NegativeInfinity;
        foreach (var l in logits) if (l > max) max = l;
        double sum = 0;
        var e = new double[V];
        for (int i = 0; i < V; i++) { e[i] = Math.Exp((logits[i] - max) / _o.Temperature); sum += e[i]; }
        if (_o.TopK > 0 || _o.TopP < 1f)
        {
            var order = new int[V];
            for (int i = 0; i < V; i++) order[i] = i;
            // Stable descending order: ties keep the lower id first, so results are reproducible.
            Array.Sort(order, (a, b) => e[b].CompareTo(e[a]) is var c && c != 0 ? c : a.CompareTo(b));
            int keep = _o.TopK > 0 ? Math.Min(_o.TopK, V) : V;
            if (_o.TopP < 1f)
            {
                double keptMass = 0; for (int i = 0; i < keep; i++) keptMass += e[order[i]];
                double cum = 0; int n = 0;
                while (n < keep) { cum += e[order[n]]; n++; if (cum >= _o.TopP * keptMass) break; }
                keep = n;
            }
            var kept = new double[V];
            sum = 0;
            for (int i = 0; i < keep; i++) { kept[order[i]] = e[order[i]]; sum += e[order[i]]; }
            e = kept;
        }
        for (int i = 0; i < V; i++) p[i] = (float)(e[i] / sum);
        return p;
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
    public int Next(ReadOnlySpan<float> logits) => _o.IsGreedy ? ArgMax(logits) : Draw(Probabilities(logits));

    /// <summary>Index of the largest value; the lowest index wins ties (as torch.argmax and llama2.c do).</summary>
    public static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }
}
