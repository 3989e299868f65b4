using Beagle.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli;

/// <summary>
/// Turns any exception that escapes a command into one clear line on stderr and an <see cref="ExitCodes"/> value.
/// Stack traces only with BEAGLE_DEBUG=1: a user who mistyped a path needs the path, not the call stack.
/// </summary>
internal static class CliErrors
{
    /// <summary>Standard error, so that `beagle generate ... > out.txt` keeps errors on the terminal.</summary>
    /// Never hard-wrapped: a URL or path split over two lines cannot be copied (the terminal wraps softly anyway).
    public static readonly IAnsiConsole Stderr = CreateStderr();

    static IAnsiConsole CreateStderr()
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        console.Profile.Width = 10_000;
        return console;
    }

    static bool Debug => Environment.GetEnvironmentVariable("BEAGLE_DEBUG") is "1" or "true";

    /// <param name="cancelled">Whether Ctrl+C was pressed (an OperationCanceledException without it is a timeout: runtime error).</param>
    public static int Handle(Exception e, bool cancelled)
    {
        if (e is AggregateException { InnerExceptions.Count: 1 } a) e = a.InnerExceptions[0];
        int code = Classify(e, cancelled);
        switch (code)
        {
            case ExitCodes.Cancelled:
                Console.Out.Flush();
                Stderr.WriteLine();
                Stderr.MarkupLine("[yellow]cancelled[/]");
                break;
            case ExitCodes.Usage when e is CommandAppException { Pretty: { } pretty }:
                Stderr.Write(pretty);   // Spectre's own rendering points at the offending argument
                break;
            case ExitCodes.ModelNotAvailable:
                Stderr.MarkupLine($"[red]{Markup.Escape(e.Message)}[/]");
                break;
            default:
                Stderr.MarkupLine($"[red]error:[/] {Markup.Escape(OneLine(e))}");
                break;
        }
        if (Debug && code != ExitCodes.Cancelled) Stderr.WriteException(e);
        return code;
    }

    internal static int Classify(Exception e, bool cancelled) => e switch
    {
        OperationCanceledException when cancelled => ExitCodes.Cancelled,
        ModelNotAvailableException => ExitCodes.ModelNotAvailable,
        CommandParseException or CommandRuntimeException => ExitCodes.Usage,
        _ => ExitCodes.RuntimeError,
    };

    /// <summary>The message, followed by the innermost cause when it adds something (e.g. the OS error of an I/O failure).</summary>
    static string OneLine(Exception e)
    {
        var msg = e.Message;
        var inner = e.InnerException;
        while (inner?.InnerException is not null) inner = inner.InnerException;
        if (inner is not null && !msg.Contains(inner.Message, StringComparison.Ordinal)) msg += $" ({inner.Message})";
        return msg.ReplaceLineEndings(" ");
    }
}
