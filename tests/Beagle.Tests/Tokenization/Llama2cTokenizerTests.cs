using Beagle.Tests.Infrastructure;
using Beagle.Tokenization;
using Xunit;

namespace Beagle.Tests.Tokenization;

public class Llama2cTokenizerTests
{
    [Theory]
    [InlineData("The café was naïve. 🙂 Done.")]
    [InlineData("日本語 and emoji 🎉👍🏽")]
    public void Byte_fallback_tokens_stream_back_to_the_exact_text(string text)
    {
        var tok = TestAssets.StoriesTokenizer;
        var ids = tok.Encode(text, addBos: true);
        // tok512 has no piece for the emoji: it must go out as 4 byte-fallback tokens (ids 3..258).
        Assert.Contains(ids, id => id is >= 3 and <= 258);
        Assert.Equal(text, tok.Decode(ids.Skip(1), previous: 1));
        HuggingFaceTokenizerTests.AssertStreamsLikeWhole(tok, ids, text);
    }

    [Fact]
    public void A_model_claiming_a_different_vocabulary_is_refused()
    {
        var e = Assert.Throws<InvalidDataException>(() => TokenizerLoader.Load(TestAssets.TokenizerPath, 1000));
        Assert.Contains("512", e.Message);
        Assert.Contains("1000", e.Message);
        Assert.Equal(512, TokenizerLoader.Load(TestAssets.TokenizerPath, 512).VocabSize);
    }

    [Fact]
    public void A_truncated_tokenizer_file_is_refused()
    {
        using var dir = TestAssets.TempDir();
        var bytes = File.ReadAllBytes(TestAssets.TokenizerPath);
        File.WriteAllBytes(dir.File("tok.bin"), bytes[..(bytes.Length - 3)]);
        Assert.Throws<InvalidDataException>(() => Llama2cTokenizer.Load(dir.File("tok.bin")));
    }
}
