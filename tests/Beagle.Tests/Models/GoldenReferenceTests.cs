using Beagle.Decoding;
using Beagle.Tests.Infrastructure;
using Beagle.Tokenization;
using Xunit;

namespace Beagle.Tests.Models;

/// <summary>The target runtime against llama2.c's run.c (golden files produced by the C reference at temperature 0).</summary>
public class GoldenReferenceTests
{
    [Fact]
    public void Encoding_of_once_upon_a_time_equals_the_reference_ids()
    {
        var ids = TestAssets.StoriesTokenizer.Encode("Once upon a time", addBos: true);
        Assert.Equal(TestAssets.ReadIds("prompt_once_upon_a_time.ids.txt"), ids);
    }

    [Fact]
    public void Logits_at_positions_0_to_2_match_the_reference_within_1e_4()
    {
        var model = TestAssets.Stories;
        var prompt = TestAssets.ReadIds("prompt_once_upon_a_time.ids.txt");
        var lines = File.ReadAllLines(TestAssets.Golden("logits_once_upon_a_time_pos0-2.txt")).Where(l => l.StartsWith("LOGITS")).ToArray();
        Assert.Equal(3, lines.Length);
        using var cache = model.NewCache();
        for (int pos = 0; pos < 3; pos++)
        {
            var expected = lines[pos].Split(':')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(float.Parse).ToArray();
            Assert.Equal(512, expected.Length);
            Assert.Contains($"token={prompt[pos]}", lines[pos]);
            using var o = model.Forward(cache, [prompt[pos]], [pos]);
            var actual = o.Logits[0].data<float>().ToArray();
            var maxDiff = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
            Assert.True(maxDiff < 1e-4, $"position {pos}: max |logit - reference| = {maxDiff}");
        }
    }

    [Fact]
    public void Prefill_of_several_tokens_gives_the_same_logits_as_one_token_at_a_time()
    {
        var model = TestAssets.Stories;
        var prompt = TestAssets.ReadIds("greedy_once_upon_a_time_256.ids.txt").Take(40).ToArray();
        using var c1 = model.NewCache();
        using var all = model.Forward(c1, prompt, Enumerable.Range(0, prompt.Length).ToArray());
        using var c2 = model.NewCache();
        for (int i = 0; i < prompt.Length; i++)
        {
            using var one = model.Forward(c2, [prompt[i]], [i]);
            var diff = (one.Logits[0] - all.Logits[i]).abs().max().item<float>();
            Assert.True(diff < 1e-4, $"position {i}: {diff}");
            var hdiff = (one.Hidden[0] - all.Hidden[i]).abs().max().item<float>();
            Assert.True(hdiff < 1e-4, $"hidden at {i}: {hdiff}");
        }
    }

    [Theory]
    [InlineData("greedy_from_bos_200", 1, 200)]
    [InlineData("greedy_once_upon_a_time_256", 5, 252)]
    public void Greedy_tokens_and_text_equal_the_reference(string golden, int promptLength, int steps)
    {
        var expected = TestAssets.ReadIds(golden + ".ids.txt");
        var prompt = expected.Take(promptLength).ToArray();
        var gen = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer);
        var ids = gen.Generate(prompt, new GenerationOptions { MaxNewTokens = steps }).SelectMany(c => c.TokenIds).ToArray();
        Assert.Equal(expected.Skip(promptLength).ToArray(), ids);

        var text = TestAssets.StoriesTokenizer.Decode(expected.Skip(1), previous: 1);
        Assert.Equal(File.ReadAllText(TestAssets.Golden(golden + ".txt")).TrimEnd('\n'), text);
    }
}
