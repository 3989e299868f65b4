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
    /// <summary>Standard error (<see cref="CliConsole.Error"/>), so that `beagle generate ... > out.txt` keeps errors on the terminal.</summary>
    public static IAnsiConsole Stderr => CliConsole.Error;

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
    internal static string OneLine(Exception e)
    {
        var msg = ProductMessage(e);
        var inner = e.InnerException;
        while (inner?.InnerException is not null) inner = inner.InnerException;
        if (inner is not null && ProductMessage(inner) is var innerMsg && !msg.Contains(innerMsg, StringComparison.Ordinal)) msg += $" ({innerMsg})";
        return msg.ReplaceLineEndings(" ");
    }

    /// <summary>
    /// The sentence a user should read. An ArgumentException's Message ends in " (Parameter 'promptIds')" (and, out of
    /// range, "Actual value was ..."): the code's vocabulary, not the user's; the sentence before it says what to do.
    /// </summary>
    internal static string ProductMessage(Exception e)
    {
        var msg = e.Message;
        if (e is ArgumentException { ParamName: { Length: > 0 } name }
            && msg.IndexOf($" (Parameter '{name}')", StringComparison.Ordinal) is var i and > 0)
            msg = msg[..i];
        return msg;
    }
}
