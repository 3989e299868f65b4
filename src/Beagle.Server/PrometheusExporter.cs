using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Text;
using Beagle.SemanticKernel;

namespace Beagle.Server;

/// <summary>
/// Exports the "Beagle" and "Beagle.Server" meters in the Prometheus text format (version 0.0.4) at <c>GET /metrics</c>:
/// counters as <c>_total</c>, up-down counters and observable gauges as gauges, histograms with cumulative buckets,
/// <c>_sum</c> and <c>_count</c>. Names are the instrument names with dots as underscores; tags become labels.
/// </summary>
public sealed class PrometheusExporter : IDisposable
{
    readonly MeterListener _listener = new();
    readonly ConcurrentDictionary<(Instrument Instrument, string Labels), Series> _series = new();

    sealed class Series(double[]? bounds)
    {
        public double Value;           // counter sum, gauge value
        public long Count;             // histogram count
        public double Sum;             // histogram sum
        public readonly double[]? Bounds = bounds;
        public readonly long[]? Buckets = bounds is null ? null : new long[bounds.Length + 1];
    }

    public PrometheusExporter()
    {
        _listener.InstrumentPublished = (i, l) =>
        {
            if (i.Meter.Name is BeagleMetrics.MeterName or ServerMetrics.MeterName) l.EnableMeasurementEvents(i);
        };
        _listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<int>((i, v, tags, _) => Record(i, v, tags));
        _listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
        _listener.Start();
    }

    void Record(Instrument i, double v, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        var s = _series.GetOrAdd((i, Labels(tags)), k => new Series(k.Instrument is Histogram<double> or Histogram<long> ? BoundsFor(k.Instrument.Unit) : null));
        lock (s)
        {
            switch (i)
            {
                case Counter<long> or Counter<double> or UpDownCounter<long> or UpDownCounter<double>: s.Value += v; break;
                case Histogram<double> or Histogram<long>:
                    s.Count++; s.Sum += v;
                    int b = Array.FindIndex(s.Bounds!, x => v <= x);
                    s.Buckets![b < 0 ? s.Bounds!.Length : b]++;
                    break;
                default: s.Value = v; break;   // observable gauges: the latest observation
            }
        }
    }

    /// <summary>Bucket bounds by unit: seconds, tokens per second, tokens per forward (acceptance length).</summary>
    static double[] BoundsFor(string? unit) => unit switch
    {
        "s" => [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
        "{token}/s" => [10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000],
        "{token}" => [1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 8],
        _ => [0.01, 0.1, 1, 10, 100, 1000, 10000],
    };

    static string Labels(ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        if (tags.Length == 0) return "";
        var parts = new List<string>(tags.Length);
        foreach (var t in tags)
            parts.Add($"{Name(t.Key)}=\"{Convert.ToString(t.Value, CultureInfo.InvariantCulture)?.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n")}\"");
        parts.Sort(StringComparer.Ordinal);
        return string.Join(",", parts);
    }

    static string Name(string s) => s.Replace('.', '_').Replace('-', '_');

    static string Num(double v) => double.IsPositiveInfinity(v) ? "+Inf" : v.ToString(CultureInfo.InvariantCulture);

    /// <summary>The current values, observable gauges polled now.</summary>
    public string Scrape()
    {
        // Gauges are current values: forget old observations (e.g. of an engine that is gone) before polling.
        foreach (var k in _series.Keys.Where(k => k.Instrument.IsObservable).ToList()) _series.TryRemove(k, out _);
        _listener.RecordObservableInstruments();
        var sb = new StringBuilder();
        foreach (var group in _series.GroupBy(kv => kv.Key.Instrument).OrderBy(g => g.Key.Name, StringComparer.Ordinal))
        {
            var i = group.Key;
            string name = Name(i.Name);
            string type = i switch
            {
                Counter<long> or Counter<double> => "counter",
                Histogram<double> or Histogram<long> => "histogram",
                _ => "gauge",
            };
            if (type == "counter") name += "_total";
            sb.Append("# HELP ").Append(name).Append(' ').Append(i.Description ?? i.Name).Append(" (").Append(i.Unit ?? "1").Append(")\n");
            sb.Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');
            foreach (var (key, s) in group.OrderBy(kv => kv.Key.Labels, StringComparer.Ordinal))
                lock (s)
                {
                    if (type != "histogram") { Line(sb, name, key.Labels, null, s.Value); continue; }
                    long cumulative = 0;
                    for (int b = 0; b <= s.Bounds!.Length; b++)
                    {
                        cumulative += s.Buckets![b];
                        Line(sb, name + "_bucket", key.Labels, $"le=\"{(b < s.Bounds.Length ? Num(s.Bounds[b]) : "+Inf")}\"", cumulative);
                    }
                    Line(sb, name + "_sum", key.Labels, null, s.Sum);
                    Line(sb, name + "_count", key.Labels, null, s.Count);
                }
        }
        return sb.ToString();
    }

    static void Line(StringBuilder sb, string name, string labels, string? extra, double value)
    {
        sb.Append(name);
        var all = string.Join(",", new[] { labels, extra }.Where(x => !string.IsNullOrEmpty(x)));
        if (all.Length > 0) sb.Append('{').Append(all).Append('}');
        sb.Append(' ').Append(Num(value)).Append('\n');
    }

    public void Dispose() => _listener.Dispose();
}
