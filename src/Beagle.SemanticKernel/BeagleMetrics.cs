using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Beagle.Decoding;
using Beagle.Runtime;

namespace Beagle.SemanticKernel;

/// <summary>
/// The "Beagle" meter (System.Diagnostics.Metrics): per-generation speed and acceptance, tokens generated and the
/// queue depth and batch size of every live engine. Every measurement carries the tag <c>beagle.model</c>.
/// </summary>
public static class BeagleMetrics
{
    public const string MeterName = "Beagle";
    static readonly Meter Meter = new(MeterName, "1.0");
    static readonly ConcurrentDictionary<BeagleEngine, string> Engines = new();

    /// <summary>Speed of each finished generation: new tokens over its wall time, prefill included (GenerationStats.TokensPerSecond).</summary>
    public static readonly Histogram<double> TokensPerSecond =
        Meter.CreateHistogram<double>("beagle.generation.tokens_per_second", "{token}/s", "New tokens per second of a generation, prefill included");
    /// <summary>Tokens per target forward (tau) of each finished generation; 1 for plain decoding.</summary>
    public static readonly Histogram<double> AcceptanceLength =
        Meter.CreateHistogram<double>("beagle.generation.acceptance_length", "{token}", "Tokens emitted per target forward (tau)");
    /// <summary>Tokens generated, including those of cancelled generations.</summary>
    public static readonly Counter<long> GeneratedTokens =
        Meter.CreateCounter<long>("beagle.generated_tokens", "{token}", "Tokens generated");

    /// <summary>Training loss reported by background draft-training jobs (Beagle.Hosting), tagged with the job id.</summary>
    public static readonly Histogram<double> TrainingLoss =
        Meter.CreateHistogram<double>("beagle.training.loss", "1", "Training loss of a draft-training job, per progress report");
    /// <summary>Training throughput of background draft-training jobs.</summary>
    public static readonly Histogram<double> TrainingTokensPerSecond =
        Meter.CreateHistogram<double>("beagle.training.tokens_per_second", "{token}/s", "Training throughput of a draft-training job");

    /// <summary>Records one training progress report.</summary>
    internal static void RecordTraining(string jobId, double loss, double tokensPerSecond)
    {
        var tag = new KeyValuePair<string, object?>("beagle.job", jobId);
        if (double.IsFinite(loss)) TrainingLoss.Record(loss, tag);
        if (tokensPerSecond > 0) TrainingTokensPerSecond.Record(tokensPerSecond, tag);
    }

    static BeagleMetrics()
    {
        Meter.CreateObservableGauge("beagle.engine.queue_depth",
            () => Engines.Select(e => new Measurement<int>(e.Key.QueueDepth, new KeyValuePair<string, object?>("beagle.model", e.Value))),
            "{request}", "Requests waiting or running in an engine");
        Meter.CreateObservableGauge("beagle.engine.batch_size",
            () => Engines.Select(e => new Measurement<int>(e.Key.BatchSize, new KeyValuePair<string, object?>("beagle.model", e.Value))),
            "{request}", "Generations decoded together in an engine's running batch");
    }

    internal static void Track(BeagleEngine engine, string modelId) => Engines[engine] = modelId;
    internal static void Untrack(BeagleEngine engine) => Engines.TryRemove(engine, out _);

    /// <summary>Records one generation (finished, failed or cancelled).</summary>
    internal static void Record(string modelId, GenerationStats stats, bool completed)
    {
        var tag = new KeyValuePair<string, object?>("beagle.model", modelId);
        if (stats.NewTokens > 0) GeneratedTokens.Add(stats.NewTokens, tag);
        if (!completed || stats.NewTokens == 0) return;
        TokensPerSecond.Record(stats.TokensPerSecond, tag);
        if (stats.TargetForwards > 0) AcceptanceLength.Record(stats.AcceptanceLength, tag);
    }
}
