using System.Diagnostics.Metrics;
using Beagle.Runtime;

namespace Beagle.Server;

/// <summary>
/// The "Beagle.Server" meter: HTTP requests by endpoint and status, requests in flight, cancellations, latency and time
/// to first token. Generation speed, acceptance length, generated tokens, queue depth and batch size are the engine
/// faces' own "Beagle" meter (<see cref="SemanticKernel.BeagleMetrics"/>), which the server records into
/// as the in-process chat client does. Every measurement carries <c>beagle.model</c>.
/// </summary>
public static class ServerMetrics
{
    public const string MeterName = "Beagle.Server";
    static readonly Meter Meter = new(MeterName, "1.0");

    public static readonly Counter<long> Requests =
        Meter.CreateCounter<long>("beagle.server.requests", "{request}", "HTTP requests answered, by endpoint and status code");
    public static readonly UpDownCounter<long> ActiveGenerations =
        Meter.CreateUpDownCounter<long>("beagle.server.active_generations", "{generation}", "Generations (one per prompt of a request) the server has handed to the engine and not yet finished (queued or running)");
    public static readonly Counter<long> Cancelled =
        Meter.CreateCounter<long>("beagle.server.cancelled", "{request}", "Generations stopped because the client disconnected or cancelled");
    public static readonly Histogram<double> RequestSeconds =
        Meter.CreateHistogram<double>("beagle.server.request_duration", "s", "Wall time of a generation request, queueing included");
    public static readonly Histogram<double> FirstTokenSeconds =
        Meter.CreateHistogram<double>("beagle.server.time_to_first_token", "s", "From the request's arrival to its first generated text, queueing included");

    static ServerMetrics()
    {
        // The Prometheus convention's name, so that dashboards and `beagle load-test` find the server's memory.
        Meter.CreateObservableGauge("process.resident_memory_bytes", () => Environment.WorkingSet, "By", "Resident set size of the server process");
    }

    internal static KeyValuePair<string, object?> Model(string model) => new("beagle.model", model);
}
