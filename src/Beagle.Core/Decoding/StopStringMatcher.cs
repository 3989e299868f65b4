namespace Beagle.Decoding;

/// <summary>
/// Streams text while watching for stop strings: text that could still be the start of a stop string is held
/// back until it is clear, so a caller never sees a partial stop string, and the stop string itself is never emitted.
/// </summary>
internal sealed class StopStringMatcher(IReadOnlyList<string> stops)
{
    readonly System.Text.StringBuilder _held = new();

    public bool Stopped { get; private set; }

    /// <summary>
    /// Adds decoded text and appends the part that is safe to emit to <paramref name="output"/>. Without stop strings
    /// the text passes straight through (no string made); with them, matching works on strings.
    /// </summary>
    public void Push(ReadOnlySpan<char> text, System.Text.StringBuilder output)
    {
        if (Stopped || text.IsEmpty) return;
        if (stops.Count == 0) output.Append(text);
        else output.Append(Push(text.ToString()));
    }

    /// <summary>Adds decoded text; returns the part that is safe to emit.</summary>
    public string Push(string text)
    {
        if (Stopped) return "";
        if (stops.Count == 0) return text;
        _held.Append(text);
        var s = _held.ToString();
        int cut = -1;
        foreach (var stop in stops)
        {
            int i = s.IndexOf(stop, StringComparison.Ordinal);
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        if (cut >= 0) { Stopped = true; _held.Clear(); return s[..cut]; }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        int hold = 0;
        foreach (var stop in stops)
            for (int len = Math.Min(stop.Length - 1, s.Length); len > hold; len--)
                if (string.CompareOrdinal(s, s.Length - len, stop, 0, len) == 0) { hold = len; break; }
        _held.Clear().Append(s, s.Length - hold, hold);
        return s[..^hold];
    }

    /// <summary>At the end of generation: whatever was held back is not a stop string, so it is emitted.</summary>
    public string Flush() { var s = Stopped ? "" : _held.ToString(); _held.Clear(); return s; }
}
