using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tests.Infrastructure;
using Xunit;
using Xunit.Abstractions;

namespace Beagle.Tests.Decoding;

/// <summary>
/// Speculative sampling has the target's output distribution, end to end: thousands of seeded speculative generations,
/// and at every position from token 2 on (token 1 comes from the prefill, the same code as plain sampling) the tokens
/// drawn are compared with the target's own sampling distribution given the tokens before them (one target forward
/// over each generated sequence, through the same <see cref="Sampler.Probabilities"/> plain sampling uses). Under
/// losslessness each token is an exact draw from that conditional distribution, so the counts per token match the sums
/// of those probabilities up to chance; a Pearson chi-square per position measures the gap. The same machinery run
/// with the acceptance rule deliberately broken must exceed its threshold.
/// </summary>
public class SpeculativeSamplingTests(ITestOutputHelper output)
{
    static readonly Lazy<IDraftModel> TrainedBeagle = new(() =>
        DraftCheckpoint.Load(Beagle.Runtime.DefaultModels.BundledDraft("stories260K", "beagle")!, TestAssets.Stories));
    static readonly Lazy<MarkovDraft> Bigram = new(() => MarkovDraft.Bigram(TestAssets.StoriesTokenizer, TestAssets.TinyStories, 512));

    /// <summary>Tokens generated per sample: tokens 2-6 come from verification rounds (the budgets below emit at most 3 a round, so at least two).</summary>
    const int Tokens = 6;

    /// <summary>
    /// Samples per setting. Sized for the statistic to catch a token whose probability is off by 2 points at ~10 %
    /// (noncentrality about N x 0.0044 with the mass taken from the rest in proportion; at N = 12,000 that is 53, which
    /// clears the 0.9999 quantile of ~17 degrees of freedom about nine times in ten: see the power test below).
    /// </summary>
    const int Samples = 12_000;

    static readonly string Prompt = "One day, a";   // an open prompt: many likely continuations

    public static TheoryData<float, int, float, double> Settings => new()
    {
        { 1.0f, 0, 1.0f, 0 },       // the full distribution, no confidence floor
        { 1.0f, 0, 1.0f, 0.1 },     // a floor: rounds whose draft nodes fall below 0.1 stop early or do not draft
        { 0.7f, 20, 0.9f, 0 },      // temperature, top-k and top-p (fewer samples: see below)
    };

    [Theory]
    [MemberData(nameof(Settings))]
    public void Tokens_2_to_6_over_several_rounds_have_the_targets_sampling_distribution(float temperature, int topK, float topP, double floor)
    {
        var sampling = new SamplingOptions { Temperature = temperature, TopK = topK, TopP = topP };
        var budget = new SpeculativeOptions { TreeTokens = 6, TreeDepth = 2, TreeTopK = 3, TreeMinProb = floor };
        var gen = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, TrainedBeagle.Value);
        // The power requirement is on the full distribution, with and without a floor; the truncated setting is a second
        // check at half the samples (its distributions have a few likely tokens, so the same shift shows sooner).
        int n = topK == 0 ? Samples : Samples / 2;
        var (fit, ran) = Sample(gen, sampling, budget, n, seed: 1_000);

        output.WriteLine($"T={temperature} top-k {topK} top-p {topP} floor {floor}: {ran}");
        Assert.True(ran.DraftRounds > n, $"speculation must run in most generations: {ran}");
        Assert.True(ran.AcceptedDraftTokens > n / 2, $"the trained draft must be accepted often enough to exercise the tree: {ran}");
        foreach (var r in fit.Results())
        {
            output.WriteLine(r.ToString());
            Assert.True(r.Chi < r.Critical, $"not the target's distribution: {r}");
        }
    }

    /// <summary>
    /// With one step of the acceptance rule broken, the same statistic exceeds its threshold at some position. Fewer
    /// samples than above are enough: each broken step moves probabilities by far more than 2 points.
    /// </summary>
    [Theory]
    [InlineData(nameof(AcceptanceMutation.NoRenormalisation), 0.0)]
    [InlineData(nameof(AcceptanceMutation.NoRenormalisation), 0.1)]
    [InlineData(nameof(AcceptanceMutation.BonusFromUnzeroed), 0.0)]
    [InlineData(nameof(AcceptanceMutation.BonusFromUnzeroed), 0.1)]
    [InlineData(nameof(AcceptanceMutation.AcceptFirstChild), 0.0)]
    [InlineData(nameof(AcceptanceMutation.AcceptFirstChild), 0.1)]
    public void The_end_to_end_test_detects_each_broken_step_of_the_rule(string broken, double floor)
    {
        var mutation = Enum.Parse<AcceptanceMutation>(broken);
        var sampling = new SamplingOptions { Temperature = 1f };
        var budget = new SpeculativeOptions { TreeTokens = 6, TreeDepth = 2, TreeTopK = 3, TreeMinProb = floor };
        var gen = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, TrainedBeagle.Value) { AcceptanceMutation = mutation };
        var (fit, _) = Sample(gen, sampling, budget, 2_000, seed: 1_000);

        var results = fit.Results();
        foreach (var r in results) output.WriteLine($"{mutation}, floor {floor}: {r}");
        var worst = results.MaxBy(r => r.Chi / r.Critical)!;
        Assert.True(worst.Chi > worst.Critical, $"{mutation} went unnoticed: largest statistic {worst}");
    }

    /// <summary>The larger target too (fewer samples: stories5M costs ~10x more per token), with a draft that is not the project's.</summary>
    [Fact]
    public void Stories5M_tokens_2_to_6_have_the_targets_sampling_distribution()
    {
        var sampling = new SamplingOptions { Temperature = 0.8f, TopP = 0.95f };
        var gen = new Generator(TestAssets.Stories5M, TestAssets.StoriesTokenizer, Bigram.Value);
        var (fit, ran) = Sample(gen, sampling, new SpeculativeOptions { TreeTokens = 8, TreeDepth = 2, TreeTopK = 4 }, 1_000, seed: 7_000);
        output.WriteLine(ran.ToString());
        Assert.True(ran.AcceptedDraftTokens > 0, $"the draft must be accepted sometimes: {ran}");
        foreach (var r in fit.Results())
        {
            output.WriteLine(r.ToString());
            Assert.True(r.Chi < r.Critical, $"not the target's distribution: {r}");
        }
    }

    /// <summary>
    /// The drafts that need no training: a draft language model (a tree over its top-k; the target itself as the draft
    /// model, the cheapest one whose proposals sampling still rejects often) and prompt lookup, whose draft distribution
    /// is a point mass (on a prompt that repeats itself, at a temperature where the target copies it often enough).
    /// Fewer samples than the trained draft's test: the threshold is the same, only the power to see a small shift is lower.
    /// </summary>
    [Theory]
    [InlineData("draft-lm-self", "One day, a", 1.0f, 2_000)]
    [InlineData("ngram", "Once upon a time, there was a little girl named Lily. She loved to play outside. Once upon a time, there was a little", 0.6f, 2_000)]
    public void Training_free_drafts_keep_the_targets_sampling_distribution(string kind, string prompt, float temperature, int n)
    {
        var sampling = new SamplingOptions { Temperature = temperature };
        var budget = new SpeculativeOptions { TreeTokens = 6, TreeDepth = 2, TreeTopK = 3 };
        var gen = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer, SpeculativeGreedyTests.TrainingFree(kind));
        var (fit, ran) = Sample(gen, sampling, budget, n, seed: 3_000, prompt);
        output.WriteLine($"{kind}: {ran}");
        Assert.True(ran.AcceptedDraftTokens > n / 5, $"the draft must be accepted often enough to exercise verification: {ran}");
        foreach (var r in fit.Results())
        {
            output.WriteLine(r.ToString());
            Assert.True(r.Chi < r.Critical, $"not the target's distribution: {r}");
        }
    }

    /// <summary>
    /// The statistic's power at the sample size used: multinomial samples from a distribution with one token at 10 %
    /// moved to 12 % (the mass taken from the rest in proportion) exceed the threshold in at least 80 % of 20 seeded
    /// trials, and samples from the distribution itself stay below it.
    /// </summary>
    [Fact]
    public void The_statistic_catches_a_two_point_shift_on_a_ten_percent_token_at_the_sample_size_used()
    {
        // Shaped like the positions' distributions (a few likely tokens, a tail; ~17 kept cells as they have 11-23): 10 %, then geometric.
        const int V = 30;
        var p = new double[V];
        p[0] = 0.10;
        double ratio = 0.85, norm = (1 - Math.Pow(ratio, V - 1)) / (1 - ratio);
        for (int i = 1; i < V; i++) p[i] = 0.90 * Math.Pow(ratio, i - 1) / norm;
        var shifted = p.Select((x, i) => i == 0 ? x + 0.02 : x * (1 - 0.02 / 0.90)).ToArray();
        Assert.Equal(1.0, shifted.Sum(), 9);
        var pf = p.Select(x => (float)x).ToArray();
        int detected = 0, falseAlarms = 0;
        const int Trials = 20;
        for (int t = 0; t < Trials; t++)
        {
            var rng = new Random(100 + t);
            var bad = new PositionFit(2, V); var good = new PositionFit(2, V);
            for (int i = 0; i < Samples; i++)
            {
                bad.Add(2, pf, Draw(shifted, rng));
                good.Add(2, pf, Draw(p, rng));
            }
            var rb = bad.Results().Single(); var rg = good.Results().Single();
            if (rb.Chi > rb.Critical) detected++;
            if (rg.Chi > rg.Critical) falseAlarms++;
            if (t == 0) output.WriteLine($"shifted: {rb}; unshifted: {rg}");
        }
        output.WriteLine($"detected {detected}/{Trials}, false alarms {falseAlarms}/{Trials}");
        Assert.True(detected >= 0.8 * Trials, $"a 2-point shift on a 10 % token was caught in {detected} of {Trials} trials");
        Assert.Equal(0, falseAlarms);
    }

    static int Draw(double[] p, Random rng)
    {
        double u = rng.NextDouble(), c = 0;
        for (int i = 0; i < p.Length; i++) { c += p[i]; if (u < c) return i; }
        return p.Length - 1;
    }

    /// <summary>What the speculative generations of a setting did, summed from their statistics.</summary>
    sealed record Ran(long DraftRounds, long AcceptedDraftTokens, long RoundTokens, long Forwards)
    {
        public override string ToString() => $"{DraftRounds} draft rounds, {AcceptedDraftTokens} draft tokens accepted, tau {(double)RoundTokens / Math.Max(1, Forwards):F2}";
    }

    /// <summary>
    /// <paramref name="n"/> seeded generations of <see cref="Tokens"/> tokens, each followed by one target forward over
    /// prompt + output that gives the target's sampling distribution at every generated position.
    /// </summary>
    static (PositionFit Fit, Ran Ran) Sample(Generator gen, SamplingOptions sampling, SpeculativeOptions budget, int n, int seed, string? text = null)
    {
        var target = gen.Target;
        var prompt = TestAssets.StoriesTokenizer.Encode(text ?? Prompt, true);
        int vocab = target.Config.VocabSize;
        int eos = target.Config.EosIds.Single();
        var probabilities = new Sampler(sampling);
        var fit = new PositionFit(Tokens, vocab);
        long rounds = 0, accepted = 0, roundTokens = 0, forwards = 0;
        // Each generation's seed from a seeded stream: System.Random's first draws for consecutive seeds are nearly
        // evenly spread (seeds 1000, 1001, ... gave token-1 draws so even that the statistic fell to a fifth of its df).
        var seeds = new Random(seed);
        for (int i = 0; i < n; i++)
        {
            var stats = new GenerationStats();
            var o = new GenerationOptions { MaxNewTokens = Tokens, Sampling = sampling with { Seed = seeds.Next() }, Speculative = budget };
            var y = gen.Generate(prompt, o, stats).SelectMany(c => c.TokenIds).ToArray();
            rounds += stats.DraftRounds; accepted += stats.AcceptedDraftTokens; roundTokens += stats.RoundTokens; forwards += stats.TargetForwards;
            // Positions observed: every emitted token, and the EOS that ended a generation early (a token drawn like any other).
            int observed = Math.Min(Tokens, y.Length + (stats.FinishReason == FinishReason.EndOfSequence ? 1 : 0));
            if (observed < 2) continue;
            int[] seq = [.. prompt, .. y];
            using var cache = target.NewCache(seq.Length);
            using var f = target.Forward(cache, seq, Enumerable.Range(0, seq.Length).ToArray());   // logits [len, V]
            using var logits = HostFloats.Of(f.Logits);
            for (int k = 2; k <= observed; k++)
            {
                int row = prompt.Length - 1 + (k - 1);   // the row after token k - 1 predicts token k
                var p = probabilities.Probabilities(logits.Span.Slice(row * vocab, vocab));
                fit.Add(k, p, k <= y.Length ? y[k - 1] : eos);
            }
        }
        return (fit, new Ran(rounds, accepted, roundTokens, forwards));
    }
}

/// <summary>
/// Observed token counts against expected ones at each position, where each observation comes with the exact
/// distribution it was drawn from: expected counts are sums of those probabilities (not a second sample's counts) and
/// the counts' covariance is known exactly, Σ = Σ_i (diag(p_i) − p_i p_iᵀ). The statistic is the chi-square
/// (O − E)ᵀ Σ⁻¹ (O − E) over the tokens expected in at least 1 % of the observations (and at least 5 times), the rest
/// pooled into one cell that is left out (the counts sum to n): a shift on a likely token is not diluted over hundreds of
/// rare ones, and a shift in the tail still moves the kept cells. Pearson's statistic with E in the denominator would be
/// valid only if every draw came from the same distribution; here every draw has its own context, and with the pooled
/// variance it came out at a fifth of its degrees of freedom (no power). Under losslessness the statistic is
/// chi-square with as many degrees of freedom as kept cells; the threshold is its 0.9999 quantile (Wilson-Hilferty).
/// </summary>
internal sealed class PositionFit(int positions, int vocab)
{
    readonly double[][] _expected = Enumerable.Range(0, positions + 1).Select(_ => new double[vocab]).ToArray();
    readonly double[][] _outer = new double[positions + 1][];   // Σ_i p_i p_iᵀ, upper triangle of [V, V]
    readonly long[][] _observed = Enumerable.Range(0, positions + 1).Select(_ => new long[vocab]).ToArray();
    readonly int[] _n = new int[positions + 1];
    readonly int[] _idx = new int[vocab];

    /// <summary>Probabilities below this are left out of the outer products: they change Σ by a ten-thousandth at most.</summary>
    const float Negligible = 1e-4f;

    public void Add(int position, float[] p, int token)
    {
        if (p[token] <= 0) throw new InvalidOperationException($"position {position}: token {token} has probability 0 under the target's distribution");
        var e = _expected[position];
        var outer = _outer[position] ??= new double[vocab * vocab];
        int m = 0;
        for (int x = 0; x < p.Length; x++) { e[x] += p[x]; if (p[x] >= Negligible) _idx[m++] = x; }
        for (int a = 0; a < m; a++)
        {
            int xa = _idx[a]; double pa = p[xa];
            for (int b = a; b < m; b++) outer[xa * vocab + _idx[b]] += pa * p[_idx[b]];
        }
        _observed[position][token]++;
        _n[position]++;
    }

    public sealed record Result(int Position, int Samples, double Chi, int Df, double Critical)
    {
        public override string ToString() => FormattableString.Invariant($"token {Position}: chi-square {Chi:F1} with {Df} df, threshold {Critical:F1} ({Samples} samples)");
    }

    /// <summary>One result per position that has observations.</summary>
    public IReadOnlyList<Result> Results()
    {
        var results = new List<Result>();
        for (int k = 0; k < _n.Length; k++)
        {
            if (_n[k] == 0) continue;
            var e = _expected[k];
            double own = Math.Max(5, 0.01 * _n[k]);
            var cells = Enumerable.Range(0, vocab).Where(x => e[x] >= own).OrderByDescending(x => e[x]).ToList();
            // The left-out pool must hold some mass, or Σ over the kept cells is singular (their counts would sum to n).
            if (_n[k] - cells.Sum(x => e[x]) < 0.5) cells.RemoveAt(cells.Count - 1);
            int c = cells.Count;
            var d = cells.Select(x => _observed[k][x] - e[x]).ToArray();
            var sigma = new double[c, c];
            for (int i = 0; i < c; i++)
                for (int j = 0; j < c; j++)
                {
                    int a = Math.Min(cells[i], cells[j]), b = Math.Max(cells[i], cells[j]);
                    sigma[i, j] = (i == j ? e[cells[i]] : 0) - _outer[k][a * vocab + b];
                }
            var (chi, df) = Quadratic(sigma, d);
            df = Math.Max(1, df);
            // Wilson-Hilferty approximation of the chi-square quantile at p = 0.9999 (z = 3.719).
            double crit = df * Math.Pow(1 - 2.0 / (9 * df) + 3.719 * Math.Sqrt(2.0 / (9 * df)), 3);
            results.Add(new Result(k, _n[k], chi, df, crit));
        }
        return results;
    }

    /// <summary>
    /// dᵀ A⁻¹ d for a symmetric positive semi-definite A, by Cholesky (A = L Lᵀ, then |L⁻¹ d|²), and the rank used. A cell
    /// whose count is fixed by the others (under top-p a context can leave one token certain, and a certain token varies
    /// not at all) gives a zero pivot: it is left out, and its degree of freedom with it.
    /// </summary>
    static (double Q, int Rank) Quadratic(double[,] a, double[] d)
    {
        int n = d.Length, rank = 0;
        var l = new double[n, n];
        var kept = new bool[n];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j <= i; j++)
            {
                if (j < i && !kept[j]) continue;
                double sum = a[i, j];
                for (int t = 0; t < j; t++) if (kept[t]) sum -= l[i, t] * l[j, t];
                if (i == j)
                {
                    if (sum > 1e-9 * Math.Max(1, a[i, i])) { l[i, i] = Math.Sqrt(sum); kept[i] = true; rank++; }
                }
                else l[i, j] = sum / l[j, j];
            }
        }
        double q = 0;
        var y = new double[n];
        for (int i = 0; i < n; i++)
        {
            if (!kept[i]) continue;
            double sum = d[i];
            for (int t = 0; t < i; t++) if (kept[t]) sum -= l[i, t] * y[t];
            y[i] = sum / l[i, i];
            q += y[i] * y[i];
        }
        return (q, rank);
    }
}
