namespace Beagle.Tokenization;

/// <summary>
/// Text ↔ token ids for a target model. Decoding is byte-oriented so that streaming never splits a UTF-8 character:
/// <see cref="TokenBytes"/> gives the raw bytes a token contributes, and <see cref="StreamingDecoder"/> turns a token
/// stream into complete characters.
/// </summary>
public interface ITokenizer
{
    int VocabSize { get; }
    /// <summary>Beginning-of-sequence id, or -1 when the model has none.</summary>
    int BosId { get; }
    /// <summary>Encodes text; with <paramref name="addBos"/> the BOS id is prepended (when the model has one).</summary>
    int[] Encode(string text, bool addBos);
    /// <summary>The bytes <paramref name="token"/> contributes after <paramref name="previous"/> (-1 at the start).</summary>
    ReadOnlySpan<byte> TokenBytes(int token, int previous);
    /// <summary>True for control tokens (BOS/EOS/pad and other special tokens) that decode to nothing.</summary>
    bool IsSpecial(int token);
}

public static class TokenizerExtensions
{
    /// <summary>Decodes a whole sequence; <paramref name="previous"/> is the token before the first one (-1 = none).</summary>
    public static string Decode(this ITokenizer tokenizer, IEnumerable<int> ids, int previous = -1)
    {
        var d = new StreamingDecoder(tokenizer, previous);
        var sb = new System.Text.StringBuilder();
        foreach (var id in ids) sb.Append(d.Append(id));
        sb.Append(d.Flush());
        return sb.ToString();
    }
}
