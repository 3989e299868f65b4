using Beagle.Decoding;
using Beagle.Runtime;
using Beagle.Tests.Infrastructure;
using Beagle.Tokenization;
using Xunit;

namespace Beagle.Tests.Models;

/// <summary>
/// The target runtime against llama2.c's run.c, for both shared models (golden files produced by the C reference at
/// temperature 0; stories5M's ids and logits cross-checked with an independent PyTorch forward).
/// </summary>
public class GoldenReferenceTests
{
    [Theory]
    [InlineData("stories260K")]
    [InlineData("stories5M")]
    public void Encoding_of_once_upon_a_time_equals_the_reference_ids(string model)
    {
        var ids = TestAssets.StoriesTokenizer.Encode("Once upon a time", addBos: true);
        Assert.Equal(TestAssets.ReadIds(model, "prompt_once_upon_a_time.ids.txt"), ids);
    }

    [Theory]
    [InlineData("stories260K")]
    [InlineData("stories5M")]
    public void Logits_at_positions_0_to_2_match_the_reference_within_1e_4(string name)
    {
        var model = TestAssets.Target(name);
        var prompt = TestAssets.ReadIds(name, "prompt_once_upon_a_time.ids.txt");
        var lines = File.ReadAllLines(TestAssets.Golden(name, "logits_once_upon_a_time_pos0-2.txt")).Where(l => l.StartsWith("LOGITS")).ToArray();
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

    [Theory]
    [InlineData("stories260K")]
    [InlineData("stories5M")]
    public void Prefill_of_several_tokens_gives_the_same_logits_as_one_token_at_a_time(string name)
    {
        var model = TestAssets.Target(name);
        var prompt = TestAssets.ReadIds(name, "greedy_once_upon_a_time_256.ids.txt").Take(40).ToArray();
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
    [InlineData("stories260K", "greedy_from_bos_200", 1, 200)]
    [InlineData("stories260K", "greedy_once_upon_a_time_256", 5, 252)]
    [InlineData("stories5M", "greedy_from_bos_200", 1, 200)]
    [InlineData("stories5M", "greedy_once_upon_a_time_256", 5, 252)]
    public void Greedy_tokens_and_text_equal_the_reference(string model, string golden, int promptLength, int steps)
    {
        var all = TestAssets.ReadIds(model, golden + ".ids.txt");
        var prompt = all.Take(promptLength).ToArray();
        // The reference's ids go on past an end of story (BOS, id 1), where run.c's text and our decoder stop.
        var rest = all.Skip(promptLength).Take(steps).ToArray();
        int end = Array.IndexOf(rest, 1);
        var expected = end < 0 ? rest : rest[..end];
        var gen = new Generator(TestAssets.Target(model), TestAssets.StoriesTokenizer);
        var stats = new GenerationStats();
        var ids = gen.Generate(prompt, new GenerationOptions { MaxNewTokens = steps }, stats).SelectMany(c => c.TokenIds).ToArray();
        Assert.Equal(expected, ids);
        Assert.Equal(end < 0 ? FinishReason.Length : FinishReason.EndOfSequence, stats.FinishReason);

        var text = TestAssets.StoriesTokenizer.Decode([.. prompt.Skip(1), .. expected], previous: 1);
        Assert.Equal(File.ReadAllText(TestAssets.Golden(model, golden + ".txt")).TrimEnd('\n'), text);
    }

    [Fact]
    public void The_bundled_stories5M_is_the_shared_reference_model_and_the_default()
    {
        var m = DefaultModels.Resolve();
        Assert.Equal(DefaultModels.Stories5M, m.Name);
        Assert.Equal(File.ReadAllBytes(Path.Combine(TestAssets.Shared, "models", "stories5M", "stories5M.bin")), File.ReadAllBytes(m.Model));
        Assert.Equal(File.ReadAllBytes(TestAssets.TokenizerPath), File.ReadAllBytes(m.Tokenizer));
    }
}
