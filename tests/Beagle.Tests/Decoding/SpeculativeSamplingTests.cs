using Beagle.Decoding;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Decoding;

/// <summary>
/// Speculative sampling on stories260K and stories5M has the target's output distribution: thousands of seeded samples of the
/// tokens produced by verification rounds are compared with plain sampling by a chi-square test of homogeneity.
/// </summary>
public class SpeculativeSamplingTests
{
    static readonly Lazy<MarkovDraft> Bigram = new(() => MarkovDraft.Bigram(TestAssets.StoriesTokenizer, TestAssets.TinyStories, 512));

    [Theory]
    [InlineData("stories260K", 1.0f, 0, 1.0f)]
    [InlineData("stories260K", 0.7f, 20, 0.9f)]
    [InlineData("stories5M", 0.8f, 0, 0.95f)]
    public void Tokens_from_verification_rounds_have_the_plain_sampling_distribution(string model, float temperature, int topK, float topP)
    {
        const int N = 1500;
        var prompt = TestAssets.StoriesTokenizer.Encode("One day, a", true);   // an open prompt: many likely continuations
        var target = TestAssets.Target(model);
        var plain = new Generator(target, TestAssets.StoriesTokenizer);
        var spec = new Generator(target, TestAssets.StoriesTokenizer, Bigram.Value);
        var sampling = new SamplingOptions { Temperature = temperature, TopK = topK, TopP = topP };
        var budget = new SpeculativeOptions { TreeTokens = 12, TreeDepth = 4, TreeTopK = 3 };
        var (a2, a3) = (new Dictionary<int, int>(), new Dictionary<int, int>());
        var (b2, b3) = (new Dictionary<int, int>(), new Dictionary<int, int>());
        double accepted = 0;
        for (int i = 0; i < N; i++)
        {
            var o = new GenerationOptions { MaxNewTokens = 3, Sampling = sampling with { Seed = 1000 + i } };
            var x = plain.Generate(prompt, o).SelectMany(c => c.TokenIds).ToArray();
            var stats = new GenerationStats();
            var y = spec.Generate(prompt, o with { Speculative = budget, Sampling = sampling with { Seed = 500_000 + i } }, stats).SelectMany(c => c.TokenIds).ToArray();
            accepted += stats.AcceptanceLength;
            // Token 1 comes from the prefill's logits (same code in both); tokens 2 and 3 come from verification.
            if (x.Length >= 2) Add(a2, x[0] * 512 + x[1]);
            if (y.Length >= 2) Add(b2, y[0] * 512 + y[1]);
            if (x.Length >= 3) Add(a3, x[2]);
            if (y.Length >= 3) Add(b3, y[2]);
        }
        Assert.True(accepted / N > 1.2, $"the draft should be accepted often enough to exercise the tree (mean tau {accepted / N:F2})");
        AssertHomogeneous(a2, b2, "tokens 1-2 (joint)");
        AssertHomogeneous(a3, b3, "token 3");
    }

    static void Add(Dictionary<int, int> d, int k) => d[k] = d.GetValueOrDefault(k) + 1;

    /// <summary>Chi-square test of homogeneity of two samples; categories with small expected counts are pooled.</summary>
    static void AssertHomogeneous(Dictionary<int, int> a, Dictionary<int, int> b, string what)
    {
        double na = a.Values.Sum(), nb = b.Values.Sum();
        var keys = a.Keys.Union(b.Keys).ToList();
        var big = keys.Where(k => (a.GetValueOrDefault(k) + b.GetValueOrDefault(k)) >= 20).ToList();
        var cells = big.Select(k => (A: (double)a.GetValueOrDefault(k), B: (double)b.GetValueOrDefault(k))).ToList();
        cells.Add((na - cells.Sum(c => c.A), nb - cells.Sum(c => c.B)));   // pooled rest
        cells = cells.Where(c => c.A + c.B > 0).ToList();
        double chi = 0;
        foreach (var (A, B) in cells)
        {
            double tot = A + B, ea = tot * na / (na + nb), eb = tot * nb / (na + nb);
            chi += (A - ea) * (A - ea) / ea + (B - eb) * (B - eb) / eb;
        }
        int df = cells.Count - 1;
        // Wilson-Hilferty approximation of the chi-square quantile at p = 0.999 (z = 3.09).
        double crit = df * Math.Pow(1 - 2.0 / (9 * df) + 3.09 * Math.Sqrt(2.0 / (9 * df)), 3);
        Assert.True(df >= 2, $"{what}: too few categories ({df + 1}) for a meaningful test");
        Assert.True(chi < crit, $"{what}: chi-square {chi:F1} with {df} df exceeds the 0.999 quantile {crit:F1}");
    }
}
