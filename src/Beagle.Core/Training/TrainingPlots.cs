namespace Beagle.Training;

/// <summary>PNG plots of a run (ScottPlot 5, headless, SkiaSharp): loss per epoch and acceptance per epoch.</summary>
public static class TrainingPlots
{
    /// <summary>Writes loss.png and acceptance.png into <paramref name="dir"/>. Returns the files written.</summary>
    public static string[] Write(string dir, IReadOnlyList<EpochMetrics> epochs)
    {
        Directory.CreateDirectory(dir);
        double[] xs = epochs.Select(e => (double)e.Epoch).ToArray();

        var loss = new ScottPlot.Plot();
        var ls = loss.Add.Scatter(xs, epochs.Select(e => e.Loss).ToArray());
        ls.LegendText = "training loss";
        loss.Title("Training loss per epoch"); loss.XLabel("epoch"); loss.YLabel("loss");
        var lossPath = Path.Combine(dir, "loss.png");
        loss.SavePng(lossPath, 800, 500);

        var acc = new ScottPlot.Plot();
        int depths = epochs.Count == 0 ? 0 : epochs.Max(e => e.TrainAcceptanceByDepth.Length);
        for (int d = 0; d < depths; d++)
        {
            var ys = epochs.Select(e => d < e.TrainAcceptanceByDepth.Length ? e.TrainAcceptanceByDepth[d] : double.NaN).ToArray();
            if (ys.All(double.IsNaN)) continue;
            acc.Add.Scatter(xs, ys).LegendText = $"train top-1, depth {d + 1}";
        }
        if (epochs.Any(e => e.EvalAcceptanceLength is not null))
        {
            // Acceptance length (tokens per target forward, >= 1) on the right axis.
            var tau = acc.Add.Scatter(xs, epochs.Select(e => e.EvalAcceptanceLength ?? double.NaN).ToArray());
            tau.LegendText = "eval acceptance length (right)";
            tau.Axes.YAxis = acc.Axes.Right;
            acc.Axes.Right.Label.Text = "tokens / target forward";
        }
        acc.ShowLegend();
        acc.Title("Acceptance per epoch"); acc.XLabel("epoch"); acc.YLabel("top-1 agreement");
        var accPath = Path.Combine(dir, "acceptance.png");
        acc.SavePng(accPath, 800, 500);
        return [lossPath, accPath];
    }

    /// <summary><see cref="Write"/>, but a plotting failure (e.g. missing native SkiaSharp or fonts) only reports.</summary>
    public static void TryWrite(string dir, IReadOnlyList<EpochMetrics> epochs, IProgress<TrainingProgress>? progress)
    {
        try { Write(dir, epochs); }
        catch (Exception e) when (e is TypeInitializationException or DllNotFoundException or IOException or InvalidOperationException or ArgumentException)
        {
            progress?.Report(new TrainingProgress(0, 0, 0, 0, 0, double.NaN, double.NaN, double.NaN, [], 0, 0, TimeSpan.Zero, $"plots skipped: {e.Message}"));
        }
    }
}
