using Beagle.Decoding;
using System.ComponentModel;
using Beagle.Cli.Reporting;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

public sealed class ReportSettings : CommandSettings
{
    [CommandArgument(0, "<RESULT_JSON>")]
    [Description("A result written by `beagle bench --json` (or the bench.json of a report folder).")]
    public string Result { get; init; } = "";

    [CommandOption("-o|--out <DIR>")]
    [Description("Folder for report.md and the PNG charts (default: the folder of RESULT_JSON).")]
    public string? Out { get; init; }

    public override ValidationResult Validate() =>
        File.Exists(Result) ? ValidationResult.Success() : ValidationResult.Error($"no file at '{Result}'");
}

/// <summary><c>beagle report</c>: (re)draws the markdown table and charts of a saved bench result.</summary>
public sealed class ReportCommand : Command<ReportSettings>
{
    public override int Execute(CommandContext context, ReportSettings s, CancellationToken cancellationToken)
    {
        var result = BenchResult.Load(s.Result);
        var dir = s.Out ?? Path.GetDirectoryName(Path.GetFullPath(s.Result))!;
        foreach (var f in BenchReport.Write(result, dir))
            AnsiConsole.MarkupLine($"[green]wrote[/] {Markup.Escape(f)}");
        return ExitCodes.Ok;
    }
}
