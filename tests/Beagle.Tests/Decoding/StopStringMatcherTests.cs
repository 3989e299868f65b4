using System.Text;
using Beagle.Decoding;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Decoding;

/// <summary>
/// The stop-string matcher against the definition: whatever the pieces the text arrives in, the caller receives the text
/// up to the first occurrence of any stop string (all of it when none occurs), never a character of the stop string.
/// </summary>
public class StopStringMatcherTests
{
    static string Expected(string text, string[] stops)
    {
        int cut = stops.Select(s => text.IndexOf(s, StringComparison.Ordinal)).Where(i => i >= 0).DefaultIfEmpty(text.Length).Min();
        return text[..cut];
    }

    [Theory]
    [InlineData("Once upon a time there was a cat. The end. More text", new[] { "The end" })]
    [InlineData("Once upon a time there was a cat. The end. More text", new[] { "The endless", "cat." })]
    [InlineData("aaaaaab", new[] { "aab" })]
    [InlineData("abababac", new[] { "abac", "bababa" })]
    [InlineData("no stop here, only a partial The en", new[] { "The end" })]
    [InlineData("<|eot_id|> right away", new[] { "<|eot_id|>" })]
    [InlineData("x", new[] { "xy", "x" })]
    [InlineData("text with nothing to stop", new string[0])]
    public void Any_split_of_the_text_gives_the_text_before_the_first_stop_string(string text, string[] stops)
    {
        var rng = new Random(text.Length);
        for (int trial = 0; trial < 200; trial++)
        {
            var m = new StopStringMatcher(stops);
            var output = new StringBuilder();
            int i = 0;
            while (i < text.Length && !m.Stopped)
            {
                int n = trial == 0 ? 1 : Math.Min(text.Length - i, rng.Next(1, 6));   // one character at a time, then random pieces
                m.Push(text.AsSpan(i, n), output);
                Assert.False(stops.Any(s => s.Length > 0 && output.ToString().Contains(s, StringComparison.Ordinal)), $"a stop string was emitted: '{output}'");
                i += n;
            }
            m.Flush(output);
            Assert.Equal(Expected(text, stops), output.ToString());
            Assert.Equal(Expected(text, stops).Length < text.Length, m.Stopped);
        }
    }

    [Fact]
    public void Held_text_is_released_once_it_cannot_begin_a_stop_string_and_nothing_is_allocated()
    {
        var m = new StopStringMatcher(["The end", "\n\n\n"]);
        var output = new StringBuilder(256);
        m.Push("They went home. The e", output);
        Assert.Equal("They went home. ", output.ToString());   // "The e" could still become "The end"
        m.Push("nd", output);
        Assert.True(m.Stopped);
        Assert.Equal("They went home. ", output.ToString());

        var again = new StopStringMatcher(["The end", "\n\n\n"]);
        var o2 = new StringBuilder(4096);
        again.Push("warm up the buffer. The e", o2);
        Allocations.AssertNone(() => { o2.Clear(); again.Push("ager dog ran.\n\n", o2); again.Push(" The e", o2); }, "the stop-string matcher");
        Assert.False(again.Stopped);
    }
}
