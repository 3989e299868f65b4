using Beagle.MLNet.Internal;
using Microsoft.ML.Data;
using Microsoft.ML.Transforms;

namespace Beagle.MLNet;

/// <summary>Names of the columns a Beagle transformer adds.</summary>
public static class BeagleColumns
{
    /// <summary>The generated text (String).</summary>
    public const string Completion = nameof(BeagleCompletionRow.Completion);
    /// <summary>Tokens generated (Int32).</summary>
    public const string NewTokens = nameof(BeagleCompletionRow.NewTokens);
    /// <summary>Tokens emitted per target forward, tau (Single); 1 for plain decoding.</summary>
    public const string AcceptanceLength = nameof(BeagleCompletionRow.AcceptanceLength);
    /// <summary>Speed of the row: new tokens over the generation's wall time, prefill included (Single; GenerationStats.TokensPerSecond).</summary>
    public const string TokensPerSecond = nameof(BeagleCompletionRow.TokensPerSecond);
    /// <summary>Why the row has no completion (String), e.g. a prompt longer than the model's context; empty when it has one.</summary>
    public const string Error = nameof(BeagleCompletionRow.Error);

    /// <summary>
    /// Whether the row was decoded speculatively (Boolean): at least one draft round ran. From the engine's statistics,
    /// not the options: a transformer with a draft still decodes a row plainly when no draft node clears the confidence floor.
    /// </summary>
    public const string Speculative = nameof(BeagleCompletionRow.Speculative);
    /// <summary>Rounds in which the target verified draft tokens (Int32); 0 when plain.</summary>
    public const string DraftRounds = nameof(BeagleCompletionRow.DraftRounds);
    /// <summary>Draft tokens the target accepted (Int32); 0 when plain.</summary>
    public const string AcceptedDraftTokens = nameof(BeagleCompletionRow.AcceptedDraftTokens);

    /// <summary>The prompt as the mapping sees it: a private copy of the configured input column, dropped afterwards.</summary>
    internal const string InternalPrompt = "__beagle_prompt";

    internal static readonly string[] Outputs = [Completion, NewTokens, AcceptanceLength, TokensPerSecond, Speculative, DraftRounds, AcceptedDraftTokens, Error];
}

/// <summary>Input row of the Beagle CustomMapping (public only because ML.NET binds it by reflection).</summary>
public sealed class BeaglePromptRow
{
    [ColumnName(BeagleColumns.InternalPrompt)]
    public string? Prompt { get; set; }
}

/// <summary>Output row of the Beagle CustomMapping (public only because ML.NET binds it by reflection).</summary>
public sealed class BeagleCompletionRow
{
    public string Completion { get; set; } = "";
    public int NewTokens { get; set; }
    public float AcceptanceLength { get; set; }
    public float TokensPerSecond { get; set; }
    public bool Speculative { get; set; }
    public int DraftRounds { get; set; }
    public int AcceptedDraftTokens { get; set; }
    public string Error { get; set; } = "";
}

/// <summary>
/// The factory ML.NET finds by contract name when it loads a saved Beagle pipeline. ML.NET creates it with no
/// arguments, so it cannot carry the model; <see cref="BeagleModel.Load"/> binds the runtime it built from the zip's
/// beagle/ entries to the loading thread for the duration of <c>mlContext.Model.Load</c>, and the factory picks it up
/// here. Loading a Beagle pipeline with plain <c>mlContext.Model.Load</c> therefore fails with a message saying so.
/// </summary>
[CustomMappingFactoryAttribute(ContractName)]
public sealed class BeagleMappingFactory : CustomMappingFactory<BeaglePromptRow, BeagleCompletionRow>
{
    /// <summary>Identifies the mapping in a saved model; the version changes when the stored layout does.</summary>
    public const string ContractName = "Beagle.MLNet.Generate.v1";

    [ThreadStatic] static BeagleRuntime? t_loading;

    internal static IDisposable BindForLoad(BeagleRuntime runtime)
    {
        if (t_loading is not null) throw new InvalidOperationException("a Beagle model is already being loaded on this thread");
        t_loading = runtime;
        return new Unbind();
    }

    sealed class Unbind : IDisposable { public void Dispose() => t_loading = null; }

    public override Action<BeaglePromptRow, BeagleCompletionRow> GetMapping()
    {
        var runtime = t_loading ?? throw new InvalidOperationException(
            "this ML.NET model contains a Beagle generation transform; load it with BeagleModel.Load(mlContext, path), " +
            "which restores the target and the embedded draft, not with mlContext.Model.Load");
        return runtime.Map;
    }
}
