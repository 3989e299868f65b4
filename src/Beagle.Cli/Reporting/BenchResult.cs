using System.Text.Json;
using System.Text.Json.Serialization;

namespace Beagle.Cli.Reporting;

/// <summary>
/// What <c>beagle bench</c> measured (its JSON output, snake_case): one row per decoding method on the same prompts.
/// </summary>
public sealed record BenchResult
{
    /// <summary>A one-line description of the machine (CPU, OS, runtime).</summary>
    [JsonPropertyName("machine")] public required string Machine { get; init; }
    /// <summary>libtorch intra-op threads.</summary>
    [JsonPropertyName("threads")] public int Threads { get; init; }
    [JsonPropertyName("max_new_tokens")] public int MaxNewTokens { get; init; }
    /// <summary>How many prompts every method decoded.</summary>
    [JsonPropertyName("prompts")] public int Prompts { get; init; }
    [JsonPropertyName("methods")] public required IReadOnlyList<BenchMethod> Methods { get; init; }
    /// <summary>Whether every greedy speculative output equals plain greedy decoding token for token (losslessness).</summary>
    [JsonPropertyName("greedy_outputs_identical")] public bool? GreedyOutputsIdentical { get; init; }

    static readonly JsonSerializerOptions Options = new() { WriteIndented = true };

    public static BenchResult Parse(string json) =>
        JsonSerializer.Deserialize<BenchResult>(json, Options) ?? throw new InvalidDataException("bench result: the JSON is null");

    public static BenchResult Load(string path) => Parse(File.ReadAllText(path));

    public string ToJson() => JsonSerializer.Serialize(this, Options);
}

/// <summary>One decoding method's row: plain decoding has no draft, speedup 1 and acceptance length 1.</summary>
public sealed record BenchMethod
{
    /// <summary>e.g. "baseline", "eagle2", "beagle".</summary>
    [JsonPropertyName("name")] public required string Name { get; init; }
    /// <summary>The draft checkpoint, or null for plain decoding.</summary>
    [JsonPropertyName("draft")] public string? Draft { get; init; }
    [JsonPropertyName("tokens_per_second")] public double TokensPerSecond { get; init; }
    /// <summary>Tokens/s relative to plain decoding on the same prompts.</summary>
    [JsonPropertyName("speedup")] public double Speedup { get; init; }
    /// <summary>Mean tokens emitted per target forward (tau in the EAGLE papers).</summary>
    [JsonPropertyName("acceptance_length")] public double AcceptanceLength { get; init; }
    [JsonPropertyName("peak_memory_mb")] public double PeakMemoryMb { get; init; }
    /// <summary>Acceptance rate in [0, 1] at draft depth d+1 (element d), as the bench command measures it. Empty for plain decoding.</summary>
    [JsonPropertyName("acceptance_by_depth")] public IReadOnlyList<double> AcceptanceByDepth { get; init; } = [];
}
