using Beagle.Decoding;
using Beagle.Tests.Infrastructure;
using Beagle.Training;
using Xunit;

namespace Beagle.Tests.Training;

/// <summary>--generate with data prompts (the target regenerates the data) and the cache of generated sequences.</summary>
public class GeneratedDataTests
{
    static List<int[]> Docs(int n) => SequencePacker.Tokenize(
        TextSources.SplitPlainText(File.ReadAllText(TestAssets.TinyStories)).Take(n), TestAssets.StoriesTokenizer);

    [Fact]
    public void Prefixes_are_distinct_and_skip_short_documents()
    {
        int[][] docs = [[1, 5, 6, 7], [1, 5, 6, 8], [1, 5, 6], [1, 9, 9, 9, 9], [1, 5, 6, 7, 7]];
        var p = TextSources.Prefixes(docs, 3);
        Assert.Equal([[1, 5, 6], [1, 9, 9]], p.Select(x => x.ToArray()).ToArray());
    }

    [Fact]
    public void Prefixes_with_a_stride_cut_each_document_repeatedly()
    {
        int[][] docs = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 9]];
        var p = TextSources.Prefixes(docs, 3, stride: 2);
        // first document: 3, 5 and 7 tokens; second: its 3-token prefix repeats the first's, and 5 tokens is all of it
        Assert.Equal([[1, 2, 3], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7]], p.Select(x => x.ToArray()).ToArray());
    }

    [Fact]
    public void Greedy_continuations_equal_plain_generation_and_stop_after_one_pass()
    {
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        var prompts = TextSources.Prefixes(Docs(30), 8).Take(3).ToList();
        Assert.Equal(3, prompts.Count);
        var reported = new List<int>();
        var seqs = TextSources.Generate(target, tok, count: 10, maxNewTokens: 12, temperature: 0, seed: 0, prompts, reported.Add);
        Assert.Equal(3, seqs.Count);                       // greedy: a second pass would repeat the same continuations
        Assert.Equal([1, 2, 3], reported);
        var gen = new Generator(target, tok);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(prompts[i], seqs[i][..8]);
            var expected = gen.Generate(prompts[i], new GenerationOptions { MaxNewTokens = 12 }).SelectMany(c => c.TokenIds).ToArray();
            Assert.Equal(expected, seqs[i][8..]);
        }
    }

    [Fact]
    public void Sampled_continuations_cycle_the_prompts_with_a_seed_each()
    {
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        var prompts = TextSources.Prefixes(Docs(30), 8).Take(2).ToList();
        var a = TextSources.Generate(target, tok, count: 4, maxNewTokens: 10, temperature: 1, seed: 5, prompts);
        var b = TextSources.Generate(target, tok, count: 4, maxNewTokens: 10, temperature: 1, seed: 5, prompts);
        Assert.Equal(4, a.Count);
        Assert.Equal(prompts[0], a[2][..8]);               // sequence i continues prompt i % count
        Assert.Equal(a, b);                                // reproducible
        Assert.NotEqual(a[0], a[2]);                       // same prompt, different seed
    }

    [Theory]
    [InlineData(0f)]
    [InlineData(0.9f)]
    public void Batched_generation_equals_one_sequence_at_a_time(float temperature)
    {
        // More sequences than one batch holds, prompts of different lengths, some ending at EOS before the limit:
        // each must be exactly what the Generator makes for that prompt and seed alone.
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        var prompts = TextSources.Prefixes(Docs(60), 4, stride: 9).Take(40).ToList();
        Assert.Equal(40, prompts.Count);
        var seqs = TextSources.Generate(target, tok, count: 40, maxNewTokens: 160, temperature, seed: 3, prompts);
        var gen = new Generator(target, tok);
        bool sawEos = false;
        for (int i = 0; i < 40; i++)
        {
            var o = new GenerationOptions { MaxNewTokens = 160, Sampling = new SamplingOptions { Temperature = temperature, Seed = 3 + i } };
            var expected = gen.Generate(prompts[i], o).SelectMany(c => c.TokenIds).ToArray();
            Assert.Equal([.. prompts[i], .. expected], seqs[i]);
            sawEos |= expected.Length < 160;
        }
        Assert.True(sawEos, "no sequence ended before the limit: the EOS path went untested");
    }

    [Fact]
    public void Generated_file_round_trips_and_a_damaged_file_reads_as_missing()
    {
        using var tmp = TestAssets.TempDir();
        var path = Path.Combine(tmp.Path, "g.bin");
        List<int[]> seqs = [[1, 2, 3], [], [1, 511, 7, 7]];
        GeneratedFile.Write(path, seqs);
        Assert.Equal(seqs, GeneratedFile.TryRead(path));
        Assert.Empty(Directory.GetFiles(tmp.Path, "*.tmp-*"));
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^4]);             // truncated
        Assert.Null(GeneratedFile.TryRead(path));
        File.WriteAllBytes(path, [.. bytes, 0]);           // trailing garbage
        Assert.Null(GeneratedFile.TryRead(path));
        Assert.Null(GeneratedFile.TryRead(Path.Combine(tmp.Path, "missing.bin")));
    }

    [Fact]
    public void Prompt_tokens_need_data()
    {
        var o = new TrainingOptions { OutputDir = "x", Generate = 5, GeneratePromptTokens = 8 };
        var e = Assert.Throws<ArgumentException>(() => o.Validate());
        Assert.Contains("generate-prompt-tokens", e.Message);
    }
}
