namespace Beagle.Decoding;

/// <summary>One streamed piece of a generation: the new token ids and the text that became complete with them.</summary>
public readonly record struct GenerationChunk(int[] TokenIds, string Text);

/// <summary>Counters of one generation. Filled while the stream runs; final once it ends.</summary>
public sealed class GenerationStats
{
    public int PromptTokens { get; internal set; }
    public int NewTokens { get; internal set; }
    /// <summary>Target forwards after prefill (one per decoding round).</summary>
    public int TargetForwards { get; internal set; }
    /// <summary>Draft model steps (one per tree depth per round).</summary>
    public int DraftSteps { get; internal set; }
    public double PrefillSeconds { get; internal set; }
    public double DecodeSeconds { get; internal set; }
    public double DraftSeconds { get; internal set; }
    public double VerifySeconds { get; internal set; }
    public FinishReason FinishReason { get; internal set; }
    /// <summary>AcceptedAtDepth[d] = rounds in which a draft token at depth d+1 was accepted.</summary>
    public long[] AcceptedAtDepth { get; internal set; } = [];
    /// <summary>Rounds that drafted (for acceptance-by-depth rates).</summary>
    public int DraftRounds { get; internal set; }
    /// <summary>Tokens generated during the decode rounds (excludes the token chosen from the prefill's logits).</summary>
    public int RoundTokens { get; internal set; }

    /// <summary>Tokens emitted per target forward (tau); 1 for plain decoding.</summary>
    public double AcceptanceLength => TargetForwards == 0 ? 0 : (double)RoundTokens / TargetForwards;
    /// <summary>New tokens per second of decoding (prefill excluded, as in Spec-Bench).</summary>
    public double TokensPerSecond => DecodeSeconds <= 0 ? 0 : NewTokens / DecodeSeconds;
    /// <summary>Fraction of drafting rounds whose accepted path reached depth d+1.</summary>
    public double[] AcceptanceRateByDepth => AcceptedAtDepth.Select(a => DraftRounds == 0 ? 0 : (double)a / DraftRounds).ToArray();
}

/// <summary>A finished generation.</summary>
public sealed record GenerationResult(string Text, int[] TokenIds, GenerationStats Stats);
