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
    /// <summary>From the start of the request to its first new token: the cache and draft-session setup and the prompt's forward.</summary>
    public double PrefillSeconds { get; internal set; }
    /// <summary>From the first new token to the last one (every decoding round).</summary>
    public double DecodeSeconds { get; internal set; }
    public double DraftSeconds { get; internal set; }
    public double VerifySeconds { get; internal set; }
    public FinishReason FinishReason { get; internal set; }
    /// <summary>AcceptedAtDepth[d] = rounds in which a draft token at depth d+1 was accepted.</summary>
    public long[] AcceptedAtDepth { get; internal set; } = [];
    /// <summary>Rounds that drafted: the target verified at least one draft token (for acceptance-by-depth rates).</summary>
    public int DraftRounds { get; internal set; }
    /// <summary>
    /// Tokens the decode rounds produced that reached the output (excludes the token chosen from the prefill's logits,
    /// and the verified tokens of a last round after the token limit, EOS or a stop string; the EOS itself counts).
    /// </summary>
    public int RoundTokens { get; internal set; }
    /// <summary>Bytes of the draft session's own buffers (its KV/state slots for the context, a round's draft states); 0 when plain.</summary>
    public long DraftStateBytes { get; internal set; }

    /// <summary>
    /// Whether speculation ran: at least one round verified draft tokens. A request that asked for speculation may
    /// still decode plainly (no draft, calibration found it does not pay, or no draft node cleared the confidence floor);
    /// this says what happened, not what was asked.
    /// </summary>
    public bool Speculative => DraftRounds > 0;
    /// <summary>Draft tokens the target accepted, over all rounds (the sum of <see cref="AcceptedAtDepth"/>).</summary>
    public long AcceptedDraftTokens => AcceptedAtDepth.Sum();
    /// <summary>Tokens emitted per target forward (tau); 1 for plain decoding.</summary>
    public double AcceptanceLength => TargetForwards == 0 ? 0 : (double)RoundTokens / TargetForwards;
    /// <summary>The generation's wall time: <see cref="PrefillSeconds"/> + <see cref="DecodeSeconds"/>.</summary>
    public double ElapsedSeconds => PrefillSeconds + DecodeSeconds;
    /// <summary>
    /// New tokens over the generation's wall time, prefill included (<see cref="ElapsedSeconds"/>): the first new token
    /// comes from the prefill, so its time counts too. `beagle bench` reports the same quantity (docs/cli.md).
    /// </summary>
    public double TokensPerSecond => ElapsedSeconds <= 0 ? 0 : NewTokens / ElapsedSeconds;
    /// <summary>Fraction of drafting rounds whose accepted path reached depth d+1.</summary>
    public double[] AcceptanceRateByDepth => AcceptedAtDepth.Select(a => DraftRounds == 0 ? 0 : (double)a / DraftRounds).ToArray();
}

/// <summary>A finished generation.</summary>
public sealed record GenerationResult(string Text, int[] TokenIds, GenerationStats Stats);
