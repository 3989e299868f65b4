namespace Beagle.Decoding;

/// <summary>
/// Streams text while watching for stop strings: text that could still be the start of a stop string is held
/// back until it is clear, so a caller never sees a partial stop string, and the stop string itself is never emitted.
/// Works on spans over a reused buffer, so a decode round's text makes no string.
/// </summary>
internal sealed class StopStringMatcher(IReadOnlyList<string> stops)
{
    // The held-back text (a suffix that is a proper prefix of some stop string), then the text being pushed.
    char[] _buffer = new char[64];
    int _held;

    public bool Stopped { get; private set; }

    /// <summary>Adds decoded text and appends the part that is safe to emit to <paramref name="output"/>.</summary>
    public void Push(ReadOnlySpan<char> text, System.Text.StringBuilder output)
    {
        if (Stopped || text.IsEmpty) return;
        if (stops.Count == 0) { output.Append(text); return; }
        if (_buffer.Length < _held + text.Length) Array.Resize(ref _buffer, Math.Max(2 * _buffer.Length, _held + text.Length));
        text.CopyTo(_buffer.AsSpan(_held));
        var s = _buffer.AsSpan(0, _held + text.Length);

        int cut = -1;
        for (int k = 0; k < stops.Count; k++)   // indexed: an interface enumerator would be an object per call
        {
            int i = s.IndexOf(stops[k].AsSpan());   // ordinal
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        if (cut >= 0) { Stopped = true; output.Append(s[..cut]); _held = 0; return; }

        // Hold back the longest suffix that is a proper prefix of some stop string.
        int hold = 0;
        for (int k = 0; k < stops.Count; k++)
        {
            var stop = stops[k].AsSpan();
            for (int len = Math.Min(stop.Length - 1, s.Length); len > hold; len--)
                if (s[^len..].SequenceEqual(stop[..len])) { hold = len; break; }
        }
        output.Append(s[..^hold]);
        s[^hold..].CopyTo(_buffer);   // overlapping ranges are copied correctly
        _held = hold;
    }

    /// <summary>At the end of generation: whatever was held back is not a stop string, so it is emitted.</summary>
    public void Flush(System.Text.StringBuilder output)
    {
        if (!Stopped) output.Append(_buffer, 0, _held);
        _held = 0;
    }

    /// <summary>The end of a generation: the decoder's last text pushed, then what is held back, appended to <paramref name="output"/>.</summary>
    public void End(string decoderTail, System.Text.StringBuilder output)
    {
        Push(decoderTail.AsSpan(), output);
        Flush(output);
    }
}
