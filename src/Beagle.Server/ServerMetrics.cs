using System.Diagnostics.Metrics;
using Beagle.Runtime;

namespace Beagle.Server;

/// <summary>
/// The "Beagle.Server" meter: HTTP requests by endpoint and status, requests in flight, cancellations, latency and time
/// to first token, and the engine's batch size. Generation speed, acceptance length, generated tokens and queue depth
/// are the engine faces' own "Beagle" meter (<see cref="SemanticKernel.BeagleMetrics"/>), which the server records into
/// as the in-process chat client does. Every measurement carries <c>beagle.model</c>.
/// </summary>
public static class ServerMetrics
{
    public const string MeterName = "Beagle.Server";
    static readonly Meter Meter = new(MeterName, "1.0");

    public static readonly Counter<long> Requests =
        Meter.CreateCounter<long>("beagle.server.requests", "{request}", "HTTP requests answered, by endpoint and status code");
    public static readonly UpDownCounter<long> ActiveGenerations =
        Meter.CreateUpDownCounter<long>("beagle.server.active_generations", "{request}", "Generation requests the server has handed to the engine and not yet finished (queued or running)");
    public static readonly Counter<long> Cancelled =
        Meter.CreateCounter<long>("beagle.server.cancelled", "{request}", "Generations stopped because the client disconnected or cancelled");
    public static readonly Histogram<double> RequestSeconds =
        Meter.CreateHistogram<double>("beagle.server.request_duration", "s", "Wall time of a generation request, queueing included");
    public static readonly Histogram<double> FirstTokenSeconds =
        Meter.CreateHistogram<double>("beagle.server.time_to_first_token", "s", "From the request's arrival to its first generated text, queueing included");

    /// <summary>
    /// How many requests the engine currently decodes together. The hook for a batching engine: set it (e.g.
    /// <c>e =&gt; e.BatchSize</c>) where the engine reports one; while it returns null, no batch size is exported. The
    /// in-flight count is exported regardless (<see cref="ActiveGenerations"/>).
    /// </summary>
    public static Func<BeagleEngine, int?> BatchSize { get; set; } = _ => null;

    static readonly List<(BeagleEngine Engine, string Model)> Engines = [];

    static ServerMetrics()
    {
        Meter.CreateObservableGauge("beagle.engine.batch_size", () =>
        {
            lock (Engines)
                return Engines.Select(e => (e, BatchSize(e.Engine))).Where(x => x.Item2 is not null)
                    .Select(x => new Measurement<int>(x.Item2!.Value, new KeyValuePair<string, object?>("beagle.model", x.e.Model))).ToList();
        }, "{request}", "Requests the engine decodes together (exported when the engine reports it)");
        // The Prometheus convention's name, so that dashboards and `beagle load-test` find the server's memory.
        Meter.CreateObservableGauge("process.resident_memory_bytes", () => Environment.WorkingSet, "By", "Resident set size of the server process");
    }

    internal static void Track(BeagleEngine engine, string model) { lock (Engines) Engines.Add((engine, model)); }
    internal static void Untrack(BeagleEngine engine) { lock (Engines) Engines.RemoveAll(e => e.Engine == engine); }

    internal static KeyValuePair<string, object?> Model(string model) => new("beagle.model", model);
}
