using System.Text;

namespace Beagle.Tokenization;

/// <summary>
/// Turns a stream of token ids into text without ever emitting half a UTF-8 character: bytes of an incomplete
/// character are held back until the token that completes it arrives (byte-fallback tokens split emoji and CJK
/// characters across several tokens). Invalid sequences become U+FFFD, as a strict decoder would.
/// </summary>
public sealed class StreamingDecoder(ITokenizer tokenizer, int previous = -1)
{
    readonly List<byte> _pending = [];
    int _previous = previous;

    /// <summary>Adds one token; returns the text that became complete (possibly empty).</summary>
    public string Append(int token)
    {
        char[] chars = [];
        return new string(Append(token, ref chars));
    }

    /// <summary>
    /// <see cref="Append(int)"/> without making a string: the text that became complete is decoded into
    /// <paramref name="chars"/> (grown when too short; the caller keeps it for the next call) and returned as a view of it,
    /// valid until the buffer is next used. A streaming loop that gathers text in a builder allocates nothing per token.
    /// </summary>
    public ReadOnlySpan<char> Append(int token, ref char[] chars)
    {
        if (!tokenizer.IsSpecial(token)) foreach (var b in tokenizer.TokenBytes(token, _previous)) _pending.Add(b);
        _previous = token;
        int complete = CompletePrefixLength(_pending);
        if (complete == 0) return default;
        var bytes = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending)[..complete];
        if (chars.Length < complete) chars = new char[Math.Max(complete, 64)];   // UTF-8 never decodes to more chars than bytes
        int n = Encoding.UTF8.GetChars(bytes, chars);
        _pending.RemoveRange(0, complete);
        return chars.AsSpan(0, n);
    }

    /// <summary>Returns whatever is held back (an unfinished character becomes U+FFFD).</summary>
    public string Flush()
    {
        if (_pending.Count == 0) return "";
        var text = Encoding.UTF8.GetString(_pending.ToArray());
        _pending.Clear();
        return text;
    }

    /// <summary>Length of the longest prefix that does not end inside a (possibly valid) multi-byte character.</summary>
    static int CompletePrefixLength(List<byte> bytes)
    {
        int n = bytes.Count;
        // Look back at most 3 bytes for the start of the last character.
        for (int back = 1; back <= Math.Min(4, n); back++)
        {
            byte b = bytes[n - back];
            if ((b & 0xC0) == 0x80) continue;                  // continuation byte: keep looking
            int need = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
            return back < need ? n - back : n;                 // the last character is unfinished: hold it back
        }
        return n;                                              // only continuation bytes: invalid, let the decoder replace them
    }
}
