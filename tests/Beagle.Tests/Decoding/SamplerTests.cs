using Beagle.Decoding;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Decoding;

/// <summary>
/// The sampling distribution (temperature, top-k, top-p) against a reference written from the definitions alone: softmax
/// in double, every token sorted most likely first (lower id first on ties), the first k kept, then the smallest prefix
/// of those whose mass reaches p. The sampler finds the kept tokens without sorting the vocabulary; the statistical
/// tests of speculative sampling take the sampler's distribution as their truth, so this is what checks that truth.
/// </summary>
public class SamplerTests
{
    static double[] Reference(float[] logits, SamplingOptions o)
    {
        int V = logits.Length;
        double max = logits.Max();
        var e = logits.Select(l => Math.Exp((l - max) / o.Temperature)).ToArray();
        var order = Enumerable.Range(0, V).OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();
        int keep = o.TopK > 0 ? Math.Min(o.TopK, V) : V;
        if (o.TopP < 1f)
        {
            double keptMass = order.Take(keep).Sum(i => e[i]), cum = 0;
            int n = 0;
            while (n < keep) { cum += e[order[n++]]; if (cum >= o.TopP * keptMass) break; }
            keep = n;
        }
        var p = new double[V];
        double z = order.Take(keep).Sum(i => e[i]);
        foreach (var i in order.Take(keep)) p[i] = e[i] / z;
        return p;
    }

    static float[] Logits(int V, string shape, int seed)
    {
        var rng = new Random(seed);
        double Normal() => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
        return shape switch
        {
            "normal" => [.. Enumerable.Range(0, V).Select(_ => (float)(3 * Normal()))],
            // One clear favourite over a long tail (a trained model's usual shape).
            "peaked" => [.. Enumerable.Range(0, V).Select(i => i == V / 3 ? 12f : (float)(2 * Normal() - 4))],
            // Nearly flat: the kept set is most of the vocabulary.
            "flat" => [.. Enumerable.Range(0, V).Select(_ => (float)(1e-3 * Normal()))],
            // Masked tokens (−∞) among the rest.
            "masked" => [.. Enumerable.Range(0, V).Select(i => i % 3 == 1 ? float.NegativeInfinity : (float)Normal())],
            _ => throw new ArgumentException(shape),
        };
    }

    public static TheoryData<int, string, float, int, float> Cases()
    {
        var data = new TheoryData<int, string, float, int, float>();
        (float T, int K, float P)[] settings = [(1f, 0, 1f), (0.8f, 0, 0.95f), (0.7f, 50, 1f), (1.3f, 40, 0.9f), (0.05f, 0, 0.5f), (2f, 0, 0.99f), (1f, 1_000_000, 0.3f), (1f, 0, 0.001f), (1f, 1, 1f)];
        foreach (var V in new[] { 1, 2, 7, 512, 32_000, 151_936 })
            foreach (var shape in new[] { "normal", "peaked", "flat", "masked" })
                foreach (var (T, K, P) in settings)
                    if (V <= 512 || shape != "masked")   // the large vocabularies: three shapes suffice
                        data.Add(V, shape, T, K, P);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void The_distribution_keeps_the_tokens_the_definitions_keep_with_their_renormalised_mass(int vocab, string shape, float temperature, int topK, float topP)
    {
        var o = new SamplingOptions { Temperature = temperature, TopK = topK, TopP = topP };
        var logits = Logits(vocab, shape, seed: vocab * 31 + shape.Length);
        if (shape == "masked" && vocab > 1) logits[0] = 0f;   // at least one finite logit
        var want = Reference(logits, o);
        var got = new Sampler(o).Probabilities(logits);

        Assert.Equal(vocab, got.Length);
        for (int i = 0; i < vocab; i++)
        {
            Assert.True((got[i] > 0) == (want[i] > 0), $"token {i}: kept {got[i] > 0}, the definition keeps {want[i] > 0} (p = {want[i]})");
            Assert.True(Math.Abs(got[i] - want[i]) <= 1e-6 + 1e-5 * want[i], $"token {i}: {got[i]} vs {want[i]}");
        }
        Assert.Equal(1.0, got.Sum(x => (double)x), 4);
    }

    [Fact]
    public void Ties_keep_the_lower_ids_first()
    {
        var equal = new float[10];   // all equally likely
        Assert.Equal([1 / 3f, 1 / 3f, 1 / 3f, 0, 0, 0, 0, 0, 0, 0], new Sampler(new SamplingOptions { Temperature = 1f, TopK = 3 }).Probabilities(equal));
        Assert.Equal([0.5f, 0.5f, 0, 0, 0, 0, 0, 0, 0, 0], new Sampler(new SamplingOptions { Temperature = 1f, TopP = 0.15f }).Probabilities(equal));
        // A tie at the top-k boundary behind a clear favourite: the favourite, then the lowest-id of the tied.
        float[] tied = [0f, 0f, 5f, 0f, 0f];
        var p = new Sampler(new SamplingOptions { Temperature = 1f, TopK = 2 }).Probabilities(tied);
        Assert.True(p[2] > 0.9f && p[0] > 0 && p[1] == 0 && p[3] == 0 && p[4] == 0, string.Join(", ", p));
    }

    [Fact]
    public void The_buffer_is_reused_across_calls_and_vocabularies_and_allocates_nothing_once_grown()
    {
        var s = new Sampler(new SamplingOptions { Temperature = 0.8f, TopP = 0.9f, TopK = 40 });
        var big = Logits(32_000, "normal", 1); var small = Logits(512, "peaked", 2);
        Assert.Equal(new Sampler(s.Options).Probabilities(small), s.Probabilities(small));   // a fresh sampler, the same values
        Assert.Equal(new Sampler(s.Options).Probabilities(big), s.Probabilities(big));
        Assert.Equal(new Sampler(s.Options).Probabilities(small), s.Probabilities(small));   // shrinking reads only its part

        Allocations.AssertNone(() => { s.Distribution(big); s.Distribution(small); }, "the sampler's distribution");
    }

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    public void Logits_that_are_not_finite_are_refused_with_a_clear_error(float bad)
    {
        var logits = new float[] { 0.5f, bad, -1f };
        var e = Assert.Throws<InvalidOperationException>(() => new Sampler(new SamplingOptions { Temperature = 1f, TopP = 0.9f }).Probabilities(logits));
        Assert.Contains("not finite", e.Message);
        var all = new float[] { float.NegativeInfinity, float.NegativeInfinity };
        Assert.Throws<InvalidOperationException>(() => new Sampler(new SamplingOptions { Temperature = 1f }).Next(all));
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplingOptions { Temperature = 1f }).Next([]));
    }
}
