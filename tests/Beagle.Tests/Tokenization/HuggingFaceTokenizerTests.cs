using System.Text;
using System.Text.Json.Nodes;
using Beagle.Tests.Infrastructure;
using Beagle.Tokenization;
using Xunit;

namespace Beagle.Tests.Tokenization;

/// <summary>
/// Hand-built tokenizer.json files (no real one can be downloaded here) whose expected token ids are worked out by hand
/// from the merge ranks, so encoding is checked against an independent derivation, and decoding against the input.
/// </summary>
public class HuggingFaceTokenizerTests
{
    // ------------------------------------------------------------ byte-level BPE (GPT-2 / Llama 3 / Qwen2 style)

    /// <summary>GPT-2's byte → printable character table, written out from its definition.</summary>
    static char ByteChar(int b)
    {
        int n = 0;
        for (int x = 0; x < 256; x++)
        {
            bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
            if (x == b) return printable ? (char)x : (char)(256 + n);
            if (!printable) n++;
        }
        throw new ArgumentOutOfRangeException(nameof(b));
    }

    const int EndOfText = 262;

    static string WriteByteLevel(TempDir dir)
    {
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[ByteChar(b).ToString()] = b;
        // ids 256..261 come from the merges, in rank order.
        vocab["Ġt"] = 256; vocab["he"] = 257; vocab["Ġthe"] = 258; vocab["Ã©"] = 259; vocab["ll"] = 260; vocab["ðŁ"] = 261;
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = EndOfText, ["content"] = "<|endoftext|>", ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["vocab"] = vocab,
                ["merges"] = new JsonArray("Ġ t", "h e", "Ġt he", "Ã ©", "l l", "ð Ł"),
            },
        };
        var path = dir.File("tokenizer.json");
        File.WriteAllText(path, json.ToJsonString());
        return path;
    }

    [Fact]
    public void Byte_level_bpe_applies_merges_by_rank()
    {
        using var dir = TestAssets.TempDir();
        var tok = HuggingFaceTokenizer.FromTokenizerJson(WriteByteLevel(dir));
        Assert.Equal(263, tok.VocabSize);
        Assert.Equal(-1, tok.BosId);
        // " the" → Ġ t h e → Ġt h e → Ġt he → Ġthe; "hello" → h e l l o → he l l o → he ll o.
        Assert.Equal([258], tok.Encode(" the", addBos: true));
        Assert.Equal([257, 260, 'o'], tok.Encode("hello", addBos: false));
        // "é" is C3 A9 → Ã © → merged; "ê" is C3 AA → Ã ª, no merge, two byte tokens; 🙂 is F0 9F 99 82 → ðŁ + 2 bytes.
        Assert.Equal([259], tok.Encode("é", addBos: false));
        Assert.Equal([0xC3, 0xAA], tok.Encode("ê", addBos: false));
        Assert.Equal([261, 0x99, 0x82], tok.Encode("🙂", addBos: false));
        Assert.Equal([EndOfText], tok.Encode("<|endoftext|>", addBos: false));
    }

    [Theory]
    [InlineData("Héllo wörld, the café 🙂 naïve — 日本語!")]
    [InlineData("  leading spaces\n\ttabs and newlines\n")]
    [InlineData("emoji only 🙂🎉👍🏽")]
    public void Byte_level_round_trips_and_streams_exactly(string text)
    {
        using var dir = TestAssets.TempDir();
        var tok = HuggingFaceTokenizer.FromTokenizerJson(WriteByteLevel(dir));
        var ids = tok.Encode(text + "<|endoftext|>", addBos: false);
        Assert.Equal(EndOfText, ids[^1]);
        Assert.True(tok.IsSpecial(EndOfText));
        Assert.Equal(text, tok.Decode(ids));
        AssertStreamsLikeWhole(tok, ids, text);
    }

    // ------------------------------------------------------------ SentencePiece-style BPE with byte_fallback (Llama 2 / Mistral)

    static readonly string[] SpExtra = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he", "▁hell", "▁hello", "▁w"];

    static int SpId(string piece) => 259 + Array.IndexOf(SpExtra, piece);

    static string WriteSentencePiece(TempDir dir, bool withConfig, bool metaspace = false)
    {
        var vocab = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = 3 + b;
        for (int i = 0; i < SpExtra.Length; i++) vocab[SpExtra[i]] = 259 + i;
        JsonObject Added(int id, string c) => new() { ["id"] = id, ["content"] = c, ["special"] = true };
        var json = new JsonObject
        {
            ["added_tokens"] = new JsonArray(Added(0, "<unk>"), Added(1, "<s>"), Added(2, "</s>")),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = "▁" },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "▁" }),
            },
            ["pre_tokenizer"] = null,
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                                           new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["byte_fallback"] = true, ["unk_token"] = "<unk>", ["fuse_unk"] = true, ["vocab"] = vocab,
                ["merges"] = new JsonArray("▁ h", "l l", "▁h e", "▁he ll", "▁hell o", "▁ w"),
            },
        };
        if (metaspace)
        {
            // The newer (Mistral, recent Llama 2) form: no normalizer, a Metaspace pre-tokenizer that prepends "▁" once.
            json["normalizer"] = null;
            json["pre_tokenizer"] = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = "first", ["split"] = false };
        }
        var path = dir.File("tokenizer.json");
        File.WriteAllText(path, json.ToJsonString());
        if (withConfig) File.WriteAllText(dir.File("tokenizer_config.json"), "{\"add_bos_token\": false, \"bos_token\": \"<s>\"}");
        return path;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SentencePiece_style_bpe_merges_and_falls_back_to_bytes(bool metaspace)
    {
        using var dir = TestAssets.TempDir();
        var tok = HuggingFaceTokenizer.FromTokenizerJson(WriteSentencePiece(dir, withConfig: false, metaspace));
        Assert.Equal(1, tok.BosId);   // from the post-processor template
        // "hello wörld" → "▁hello▁wörld": ▁hello | ▁w | ö = C3 B6 as bytes | r | l | d
        int[] expected = [1, SpId("▁hello"), SpId("▁w"), 3 + 0xC3, 3 + 0xB6, SpId("r"), SpId("l"), SpId("d")];
        Assert.Equal(expected, tok.Encode("hello wörld", addBos: true));
    }

    [Fact]
    public void SentencePiece_style_respects_add_bos_token_false()
    {
        using var dir = TestAssets.TempDir();
        var tok = HuggingFaceTokenizer.FromTokenizerJson(WriteSentencePiece(dir, withConfig: true), dir.File("tokenizer_config.json"));
        Assert.Equal(-1, tok.BosId);
        Assert.Equal(SpId("▁hello"), tok.Encode("hello", addBos: true)[0]);
    }

    [Theory]
    [InlineData("hello wörld")]
    [InlineData("héllo 🙂 world, naïve café 日本")]
    [InlineData("hello\nworld  two spaces")]
    public void SentencePiece_style_round_trips_and_streams_exactly(string text)
    {
        using var dir = TestAssets.TempDir();
        var tok = HuggingFaceTokenizer.FromTokenizerJson(WriteSentencePiece(dir, withConfig: false));
        var ids = tok.Encode(text, addBos: true);
        Assert.Equal(1, ids[0]);
        Assert.Equal(text, tok.Decode(ids));
        AssertStreamsLikeWhole(tok, ids, text);
        using var dir2 = TestAssets.TempDir();
        tok = HuggingFaceTokenizer.FromTokenizerJson(WriteSentencePiece(dir2, withConfig: false, metaspace: true));
        Assert.Equal(ids, tok.Encode(text, addBos: true));
    }

    [Fact]
    public void Unsupported_tokenizer_json_is_refused_with_the_reason()
    {
        using var dir = TestAssets.TempDir();
        var path = dir.File("tokenizer.json");
        File.WriteAllText(path, "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}");
        var e = Assert.Throws<InvalidDataException>(() => HuggingFaceTokenizer.FromTokenizerJson(path));
        Assert.Contains("Unigram", e.Message);
    }

    [Fact]
    public void A_tokenizer_larger_than_the_model_vocabulary_is_refused()
    {
        using var dir = TestAssets.TempDir();
        WriteByteLevel(dir);
        Assert.Equal(263, TokenizerLoader.Load(dir.Path, 300).VocabSize);   // smaller than a padded vocabulary: fine
        var e = Assert.Throws<InvalidDataException>(() => TokenizerLoader.Load(dir.Path, 200));
        Assert.Contains("263", e.Message);
        Assert.Contains("200", e.Message);
    }

    /// <summary>Token-by-token streaming must give the whole text, and never emit a broken character on the way.</summary>
    internal static void AssertStreamsLikeWhole(ITokenizer tok, int[] ids, string text)
    {
        var d = new StreamingDecoder(tok);
        var sb = new StringBuilder();
        foreach (var id in ids)
        {
            var piece = d.Append(id);
            Assert.DoesNotContain('\uFFFD', piece);
            sb.Append(piece);
        }
        sb.Append(d.Flush());
        Assert.Equal(text, sb.ToString());
    }
}
