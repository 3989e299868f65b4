namespace Beagle.Decoding;

/// <summary>How the next token is chosen. Temperature 0 is greedy (argmax); then TopK/TopP are ignored.</summary>
public sealed record SamplingOptions
{
    /// <summary>0 = greedy. Logits are divided by it before softmax.</summary>
    public float Temperature { get; init; }
    /// <summary>Keep only the K most likely tokens; 0 = off.</summary>
    public int TopK { get; init; }
    /// <summary>Nucleus: keep the smallest set of most likely tokens whose mass reaches P; 1 = off.</summary>
    public float TopP { get; init; } = 1f;
    /// <summary>Seed of the sampling RNG; null = a fresh random seed per generation.</summary>
    public int? Seed { get; init; }

    public bool IsGreedy => Temperature == 0f;

    public static SamplingOptions Greedy { get; } = new();

    public SamplingOptions Validate()
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "temperature must be a finite number >= 0 (0 = greedy)");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "top-k must be >= 0 (0 = off)");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "top-p must be in (0, 1] (1 = off)");
        return this;
    }
}

/// <summary>Why a generation ended.</summary>
public enum FinishReason { Length, EndOfSequence, StopString, ContextFull }

/// <summary>Options of one generation request.</summary>
public sealed record GenerationOptions
{
    /// <summary>Upper bound on new tokens.</summary>
    public int MaxNewTokens { get; init; } = 256;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    /// <summary>Generation ends before the first occurrence of any of these; the stop string is not returned.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    /// <summary>Prepend BOS to a text prompt.</summary>
    public bool AddBos { get; init; } = true;
    /// <summary>Speculative decoding settings; null = plain decoding of the target.</summary>
    public SpeculativeOptions? Speculative { get; init; }

    public GenerationOptions Validate()
    {
        if (MaxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "max new tokens must be >= 0");
        Sampling.Validate();
        foreach (var s in StopStrings) if (string.IsNullOrEmpty(s)) throw new ArgumentException("stop strings must not be empty", nameof(StopStrings));
        Speculative?.Validate();
        return this;
    }
}
