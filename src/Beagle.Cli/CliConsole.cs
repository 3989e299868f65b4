using Spectre.Console;

namespace Beagle.Cli;

/// <summary>
/// The two consoles of <c>beagle</c>. Standard output carries only the product (generated text, one JSON document,
/// a result table), so that <c>beagle generate --json | jq</c> works; every status line (calibration, summaries,
/// downloads, warnings, errors) goes to standard error.
/// </summary>
internal static class CliConsole
{
    /// <summary>Wide enough that Spectre never hard-wraps a line (a redirected console would otherwise be 80 columns).</summary>
    const int Unwrapped = 10_000;

    /// <summary>
    /// Standard output. On a terminal Spectre's detected width (tables and help fit the window); redirected, never
    /// hard-wrapped, so that a piped help example or JSON line is not split mid-command.
    /// </summary>
    public static IAnsiConsole Out { get; } = Create(Console.Out, wrapAtTerminalWidth: !Console.IsOutputRedirected);

    /// <summary>
    /// Standard error, never hard-wrapped: a URL or path split over two lines cannot be copied (a terminal wraps softly
    /// anyway), and `beagle generate ... > out.txt` keeps these lines on the terminal.
    /// </summary>
    public static IAnsiConsole Error { get; } = Create(Console.Error, wrapAtTerminalWidth: false);

    /// <summary>A grey status line on standard error.</summary>
    public static void Status(string text) => Error.MarkupLine($"[grey]{Markup.Escape(text)}[/]");

    /// <summary>A yellow note on standard error (something the user should know, not an error).</summary>
    public static void Note(string text) => Error.MarkupLine($"[yellow]note:[/] {Markup.Escape(text)}");

    /// <summary>
    /// Runs <paramref name="work"/> with a live status line on a terminal's stderr; redirected, without one (Spectre
    /// would print every status change as a line of its own).
    /// </summary>
    public static T WithStatus<T>(string initial, Func<Action<string>, T> work)
    {
        if (!Error.Profile.Capabilities.Interactive) return work(_ => { });
        T result = default!;
        Error.Status().Start(initial, ctx => result = work(m => ctx.Status(Markup.Escape(m))));
        return result;
    }

    static IAnsiConsole Create(TextWriter writer, bool wrapAtTerminalWidth)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(writer) });
        if (!wrapAtTerminalWidth) console.Profile.Width = Unwrapped;
        return console;
    }
}
