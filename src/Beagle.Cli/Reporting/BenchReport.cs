using Beagle.Decoding;
using System.Globalization;
using System.Text;
using ScottPlot;

namespace Beagle.Cli.Reporting;

/// <summary>
/// Writes a bench result as DIR/report.md (a table like Table 1 of the EAGLE papers: method, tokens/s, speedup,
/// acceptance length, peak memory) and three PNG charts (ScottPlot, headless): tokens_per_second.png, speedup.png
/// and acceptance_by_depth.png.
/// </summary>
public static class BenchReport
{
    public const string MarkdownFile = "report.md";
    public const string TokensPerSecondChart = "tokens_per_second.png";
    public const string SpeedupChart = "speedup.png";
    public const string AcceptanceChart = "acceptance_by_depth.png";

    const int Width = 900, Height = 540;
    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <param name="commandLine">The command that produced <paramref name="result"/> (default: this process's command line).</param>
    /// <returns>The files written, report.md first.</returns>
    public static IReadOnlyList<string> Write(BenchResult result, string dir, string? commandLine = null)
    {
        ArgumentNullException.ThrowIfNull(result);
        if (result.Methods.Count == 0) throw new ArgumentException("bench result has no methods: nothing to report", nameof(result));
        Directory.CreateDirectory(dir);
        commandLine ??= CurrentCommandLine();

        var charts = new List<string>
        {
            BarChart(result, Path.Combine(dir, TokensPerSecondChart), "Decoding speed", "tokens / second", m => m.TokensPerSecond, "F0", reference: null),
            BarChart(result, Path.Combine(dir, SpeedupChart), "Speedup over plain decoding", "speedup (×)", m => m.Speedup, "0.00×", reference: 1.0),
        };
        if (result.Methods.Any(m => m.AcceptanceByDepth.Length > 0))
            charts.Add(AcceptanceByDepthChart(result, Path.Combine(dir, AcceptanceChart)));

        var md = Path.Combine(dir, MarkdownFile);
        File.WriteAllText(md, Markdown(result, commandLine, charts.Select(Path.GetFileName).ToList()!));
        return [md, .. charts];
    }

    /// <summary>The markdown report; <paramref name="charts"/> are file names next to it.</summary>
    public static string Markdown(BenchResult r, string commandLine, IReadOnlyList<string> charts)
    {
        var sb = new StringBuilder();
        sb.AppendLine("# Beagle benchmark").AppendLine();
        sb.AppendLine($"| Method | Draft | Tokens/s | Speedup | Acceptance length τ | {(r.PeakMemoryPerMethod ? "Peak memory (MB)" : "Process peak (MB)")} | Draft memory |");
        sb.AppendLine("|---|---|---:|---:|---:|---:|---:|");
        foreach (var m in r.Methods)
            sb.AppendLine(Inv, $"| {Cell(m.Name)} | {Cell(m.Draft ?? "—")} | {m.TokensPerSecond:F1} | {m.Speedup:F2}× | {m.AcceptanceLength:F2} | {m.PeakMemoryMb:F0} | {Bytes(m.DraftBytes)} |");
        sb.AppendLine();
        sb.AppendLine("Tokens/s: new tokens over generation wall time, prefill included. τ: mean tokens emitted per target forward (1 for plain " +
            "decoding; verified tokens a generation did not emit are not counted). Speedup: tokens/s relative to plain decoding on the same prompts. " +
            (r.PeakMemoryPerMethod ? "Peak memory: the process's peak resident set during the method's generations. "
                : "Process peak: the process's peak resident set so far (it could not be reset per method on this system). ") +
            "Draft memory: the exact bytes the draft adds to plain decoding (its weights and shared copies, and one generation's session buffers).").AppendLine();

        sb.AppendLine($"- Machine: {r.Machine}");
        sb.AppendLine(Inv, $"- Threads: {r.Threads}");
        sb.Append(Inv, $"- Prompts: {r.Prompts}, at most {r.MaxNewTokens} new tokens each");
        if (r.TruncatedPrompts > 0) sb.Append(Inv, $" ({r.TruncatedPrompts} cut from the left to leave room for them in the model's context)");
        sb.AppendLine();
        if (r.Sampling != "greedy")
            sb.AppendLine($"- Sampled decoding ({r.Sampling}): outputs differ by chance and are not compared; losslessness under sampling is shown by the statistical tests");
        else if (r.GreedyOutputsIdentical is var same)
            sb.AppendLine($"- Greedy speculative outputs identical to plain greedy decoding: {(same ? "yes" : "**NO**")}");
        sb.AppendLine($"- Command: `{commandLine.Replace('`', '\'')}`").AppendLine();

        int depths = r.Methods.Max(m => m.AcceptanceByDepth.Length);
        if (depths > 0)
        {
            sb.AppendLine("## Acceptance rate by draft depth").AppendLine();
            sb.Append("| Method |");
            for (int d = 1; d <= depths; d++) sb.Append(Inv, $" depth {d} |");
            sb.AppendLine().Append("|---|").Append(string.Concat(Enumerable.Repeat("---:|", depths))).AppendLine();
            foreach (var m in r.Methods.Where(m => m.AcceptanceByDepth.Length > 0))
            {
                sb.Append($"| {Cell(m.Name)} |");
                for (int d = 0; d < depths; d++) sb.Append(d < m.AcceptanceByDepth.Length ? string.Format(Inv, " {0:F2} |", m.AcceptanceByDepth[d]) : " |");
                sb.AppendLine();
            }
            sb.AppendLine();
        }
        if (charts.Count > 0)
        {
            sb.AppendLine("## Charts").AppendLine();
            foreach (var c in charts) sb.AppendLine($"![{Path.GetFileNameWithoutExtension(c).Replace('_', ' ')}]({c})").AppendLine();
        }
        return sb.ToString();
    }

    /// <summary>A byte count for a table: "0" for none, else B, KB or MB (1024-based).</summary>
    public static string Bytes(long bytes) => bytes switch
    {
        0 => "0",
        < 1024 => string.Format(Inv, "{0} B", bytes),
        < 1024 * 1024 => string.Format(Inv, "{0:F1} KB", bytes / 1024.0),
        _ => string.Format(Inv, "{0:F2} MB", bytes / (1024.0 * 1024.0)),
    };

    static string BarChart(BenchResult r, string path, string title, string yLabel, Func<BenchMethodResult, double> value, string format, double? reference)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        var bars = r.Methods.Select((m, i) => new Bar
        {
            Position = i,
            Value = value(m),
            Label = value(m).ToString(format, Inv),
            FillColor = palette.GetColor(i),
        }).ToList();
        var bp = plot.Add.Bars(bars);
        bp.ValueLabelStyle.FontSize = 18;
        bp.ValueLabelStyle.Bold = true;
        if (reference is { } y)
        {
            var line = plot.Add.HorizontalLine(y, 1.5f, Colors.Gray, LinePattern.Dashed);
            line.LegendText = "plain decoding";   // a label on the line itself would cover the axis ticks
            plot.ShowLegend(Alignment.UpperLeft);
            plot.Legend.FontSize = 14;
        }
        plot.Axes.Bottom.SetTicks(r.Methods.Select((_, i) => (double)i).ToArray(), r.Methods.Select(m => m.Name).ToArray());
        plot.Axes.Bottom.TickLabelStyle.FontSize = 16;
        plot.Axes.Bottom.MajorTickStyle.Length = 0;
        plot.Axes.Left.TickLabelStyle.FontSize = 14;
        plot.HideGrid();
        plot.Axes.Margins(bottom: 0, top: 0.15);   // bars start at 0; room above the tallest for its label
        Label(plot, $"{title} ({r.Threads} thread{(r.Threads == 1 ? "" : "s")}, {r.Prompts} prompts)", "method", yLabel);
        plot.SavePng(path, Width, Height);
        return path;
    }

    static string AcceptanceByDepthChart(BenchResult r, string path)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        var methods = r.Methods.Where(m => m.AcceptanceByDepth.Length > 0).ToList();
        int depths = methods.Max(m => m.AcceptanceByDepth.Length);
        double groupWidth = 0.8, barWidth = groupWidth / methods.Count;
        for (int k = 0; k < methods.Count; k++)
        {
            var m = methods[k];
            var bars = m.AcceptanceByDepth.Select((a, d) => new Bar
            {
                Position = d + 1 - groupWidth / 2 + barWidth * (k + 0.5),
                Size = barWidth * 0.92,
                Value = a,
                Label = a.ToString("F2", Inv),
                FillColor = palette.GetColor(r.Methods.ToList().IndexOf(m)),   // same colour as in the other charts
            }).ToList();
            var bp = plot.Add.Bars(bars);
            bp.LegendText = m.Name;
            bp.ValueLabelStyle.FontSize = methods.Count * depths > 18 ? 10 : 13;
        }
        plot.Axes.Bottom.SetTicks(Enumerable.Range(1, depths).Select(d => (double)d).ToArray(), Enumerable.Range(1, depths).Select(d => d.ToString(Inv)).ToArray());
        plot.Axes.Bottom.TickLabelStyle.FontSize = 16;
        plot.Axes.Left.TickLabelStyle.FontSize = 14;
        plot.Axes.SetLimitsY(0, 1.12);   // rates are in [0, 1]; headroom for labels
        plot.HideGrid();
        plot.ShowLegend(Alignment.UpperRight);
        plot.Legend.FontSize = 14;
        Label(plot, "Acceptance rate by draft depth", "draft depth", "acceptance rate");
        plot.SavePng(path, Width, Height);
        return path;
    }

    static void Label(Plot plot, string title, string x, string y)
    {
        plot.Title(title, 20);
        plot.XLabel(x, 16);
        plot.YLabel(y, 16);
    }

    static string Cell(string s) => s.Replace("|", "\\|").ReplaceLineEndings(" ");

    static string CurrentCommandLine()
    {
        var args = Environment.GetCommandLineArgs().Skip(1).Select(a => a.Any(char.IsWhiteSpace) || a.Length == 0 ? $"\"{a}\"" : a);
        return string.Join(' ', ["beagle", .. args]);
    }
}
