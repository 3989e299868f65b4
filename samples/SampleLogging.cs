using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;
using Microsoft.Extensions.Options;

namespace Beagle.Samples;

/// <summary>
/// Logging for the samples: one line per entry on standard error, never a stack trace (a user who gave a bad path needs
/// the path, not the call stack), so logs never interleave with the text the samples stream to standard output.
/// </summary>
internal static class SampleLogging
{
    public static ILoggingBuilder AddSampleConsole(this ILoggingBuilder logging)
    {
        logging.ClearProviders();   // the host's defaults write multi-line entries with stack traces to stdout
        logging.AddConsole(o => { o.FormatterName = OneLineFormatter.FormatterName; o.LogToStandardErrorThreshold = LogLevel.Trace; });
        logging.AddConsoleFormatter<OneLineFormatter, ConsoleFormatterOptions>();
        return logging;
    }

    /// <summary>"[time ]level: category: message (innermost exception message)".</summary>
    sealed class OneLineFormatter(IOptionsMonitor<ConsoleFormatterOptions> options) : ConsoleFormatter(FormatterName)
    {
        public const string FormatterName = "sample-one-line";

        public override void Write<TState>(in LogEntry<TState> entry, IExternalScopeProvider? scopeProvider, TextWriter writer)
        {
            var message = entry.Formatter?.Invoke(entry.State, entry.Exception) ?? entry.State?.ToString() ?? "";
            if (entry.Exception is { } e && SampleModels.Describe(e) is var cause && !message.Contains(cause, StringComparison.Ordinal))
                message += $" ({cause})";
            if (options.CurrentValue.TimestampFormat is { } format) writer.Write(DateTime.Now.ToString(format, System.Globalization.CultureInfo.InvariantCulture));
            var category = entry.Category[(entry.Category.LastIndexOf('.') + 1)..];
            writer.WriteLine($"{Level(entry.LogLevel)}: {category}: {message.ReplaceLineEndings(" ")}");
        }

        static string Level(LogLevel l) => l switch
        {
            LogLevel.Trace => "trce", LogLevel.Debug => "dbug", LogLevel.Information => "info",
            LogLevel.Warning => "warn", LogLevel.Error => "fail", _ => "crit",
        };
    }
}
