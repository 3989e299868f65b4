using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Checkpoints;

/// <summary>Damaged or foreign files give a clear exception, never a crash or a silently wrong model.</summary>
public class Llama2cCheckpointErrorTests
{
    static string WriteVariant(TempDir dir, Func<byte[], byte[]> change)
    {
        var path = dir.File("model.bin");
        File.WriteAllBytes(path, change(File.ReadAllBytes(TestAssets.ModelPath)));
        return path;
    }

    [Fact]
    public void A_truncated_checkpoint_is_refused_with_the_sizes()
    {
        using var dir = TestAssets.TempDir();
        var path = WriteVariant(dir, b => b[..(b.Length / 2)]);
        var e = Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Load(path));
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void A_checkpoint_with_extra_bytes_is_refused()
    {
        using var dir = TestAssets.TempDir();
        var path = WriteVariant(dir, b => [.. b, 0, 0, 0, 0]);
        var e = Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Load(path));
        Assert.Contains("implies", e.Message);
    }

    [Fact]
    public void An_unknown_export_version_is_refused_naming_it()
    {
        using var dir = TestAssets.TempDir();
        var header = new byte[4096];
        BitConverter.GetBytes(0x616b3432u).CopyTo(header, 0);   // "ak42"
        BitConverter.GetBytes(7).CopyTo(header, 4);
        File.WriteAllBytes(dir.File("v7.bin"), header);
        var e = Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Load(dir.File("v7.bin")));
        Assert.Contains("version 7", e.Message);
    }

    [Fact]
    public void A_file_that_is_not_a_checkpoint_is_refused()
    {
        using var dir = TestAssets.TempDir();
        File.WriteAllBytes(dir.File("junk.bin"), Enumerable.Range(0, 5000).Select(i => (byte)(i * 37 + 11)).ToArray());
        Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Load(dir.File("junk.bin")));
        File.WriteAllBytes(dir.File("tiny.bin"), [1, 2, 3]);
        Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Load(dir.File("tiny.bin")));
    }

    [Fact]
    public void A_prompt_as_long_as_the_context_is_refused_by_the_generator()
    {
        var gen = new Beagle.Decoding.Generator(TestAssets.Stories, TestAssets.StoriesTokenizer);
        var prompt = Enumerable.Repeat(1, TestAssets.Stories.Config.MaxSeqLen).ToArray();
        var e = Assert.Throws<ArgumentException>(() => gen.Generate(prompt, new GenerationOptions { MaxNewTokens = 1 }));
        Assert.Contains("context", e.Message);
    }
}
