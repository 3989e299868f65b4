using Beagle.Tokenization;

namespace Beagle.SemanticKernel;

/// <summary>
/// Which model a registration serves and how. Bound from configuration by the hosting package (section "Beagle"),
/// or filled in code. <see cref="Validate"/> names the offending setting in every message.
/// </summary>
public sealed class BeagleModelOptions
{
    /// <summary>The configuration section the hosting package binds by default.</summary>
    public const string SectionName = "Beagle";

    /// <summary>
    /// llama2.c checkpoint (.bin), Hugging Face model folder, or a known model: <c>stories5M</c> (the default: bundled with
    /// the library, with trained drafts) or <c>stories260K</c> (from $BEAGLE_MODELS, the user cache or a download).
    /// </summary>
    public string TargetPath { get; set; } = Runtime.DefaultModels.Default;
    /// <summary>Tokenizer file; null = next to the target (tokenizer.bin or tok512.bin for llama2.c; tokenizer.json or tokenizer.model in a Hugging Face folder).</summary>
    public string? TokenizerPath { get; set; }
    /// <summary>
    /// Draft checkpoint folder (draft.json + draft.safetensors) trained for this target; null = plain decoding (with a
    /// known target: its bundled draft, see <see cref="UseBundledDraft"/>). With a draft every request decodes
    /// speculatively unless it sets "speculative": false.
    /// </summary>
    public string? DraftPath { get; set; }
    /// <summary>
    /// With a known model (<see cref="TargetPath"/> stories5M or stories260K) and no <see cref="DraftPath"/>: use its
    /// bundled Beagle draft, so the default registration decodes speculatively (on by default; false = plain decoding).
    /// </summary>
    public bool UseBundledDraft { get; set; } = true;
    /// <summary>
    /// A smaller language model with the target's tokenizer that drafts instead of a trained draft (no training): a
    /// llama2.c .bin file, a Hugging Face folder, or a known model name (stories260K). Null = none.
    /// </summary>
    public string? DraftModel { get; set; }
    /// <summary>Prompt lookup drafts instead of a trained draft (no model; pays where outputs copy the prompt).</summary>
    public bool NGram { get; set; }
    /// <summary>auto (CUDA when available), cpu or cuda[:N].</summary>
    public string Device { get; set; } = "auto";
    /// <summary>libtorch intra-op threads; null = leave libtorch's default. 1 is fastest for small models.</summary>
    public int? Threads { get; set; }
    /// <summary>
    /// With a draft: measure the best draft-tree budget for this machine, model and draft when the engine loads (a few
    /// seconds, once: cached in the user cache), and decode plainly if drafting does not pay here. Off by default so that
    /// loading is fast and deterministic; the built-in default budget is used then.
    /// </summary>
    public bool CalibrateTreeBudget { get; set; }
    /// <summary>Requests that may wait for a place in the running batch; more are rejected at once with EngineBusyException.</summary>
    public int QueueCapacity { get; set; } = 16;
    /// <summary>
    /// The most requests decoded together (continuous batching: one target forward per round serves all of them, each
    /// getting the output it would get alone; EngineOptions.MaxBatchSize). 1 = one at a time.
    /// </summary>
    public int MaxBatchSize { get; set; } = 8;
    /// <summary>
    /// Decoding threads, each running its own batch; a new request joins the least loaded (EngineOptions.Workers).
    /// 1 (default) suits a large model whose rounds are memory-bound; a small model on a multi-core CPU, whose
    /// verification is compute-bound, serves concurrent requests faster with one per core. At most MaxBatchSize.
    /// </summary>
    public int Workers { get; set; } = 1;
    /// <summary>
    /// A streamed response whose reader stops reading without disposing or cancelling it is abandoned after this long:
    /// its generation stops so that the requests behind it run (EngineOptions.StreamIdleTimeout). Configuration: "00:00:30".
    /// </summary>
    public TimeSpan StreamIdleTimeout { get; set; } = TimeSpan.FromSeconds(30);
    /// <summary>plain, llama2, llama3, chatml (qwen) or mistral; null = detected from the model (see ChatTemplates.Detect).</summary>
    public string? ChatTemplate { get; set; }
    /// <summary>Output token limit when a request sets none (ChatOptions.MaxOutputTokens / max_tokens).</summary>
    public int DefaultMaxTokens { get; set; } = 256;
    /// <summary>Model id reported in responses and metadata; null = the target's file or folder name.</summary>
    public string? ModelId { get; set; }

    /// <summary>The model id: <see cref="ModelId"/> or the target's file/folder name without extension.</summary>
    public string EffectiveModelId => !string.IsNullOrWhiteSpace(ModelId) ? ModelId
        : Path.GetFileNameWithoutExtension(Path.TrimEndingDirectorySeparator(TargetPath));

    /// <summary>
    /// The problems with these options, each naming its setting (prefixed with <paramref name="prefix"/>, e.g. "Beagle:").
    /// With <paramref name="checkFiles"/> the paths must exist too (done at host start, not at registration, so that
    /// registering never touches the disk).
    /// </summary>
    public IReadOnlyList<string> Problems(bool checkFiles, string prefix = "")
    {
        var p = new List<string>();
        if (string.IsNullOrWhiteSpace(TargetPath)) p.Add($"{prefix}{nameof(TargetPath)} is required: a llama2.c checkpoint (.bin), a Hugging Face model folder, or stories5M / stories260K");
        else if (checkFiles && !Runtime.DefaultModels.IsKnownName(TargetPath) && !File.Exists(TargetPath) && !Directory.Exists(TargetPath)) p.Add($"{prefix}{nameof(TargetPath)}: no file or folder at '{TargetPath}'");
        if (TokenizerPath is not null && checkFiles && !File.Exists(TokenizerPath) && !Directory.Exists(TokenizerPath))
            p.Add($"{prefix}{nameof(TokenizerPath)}: no file at '{TokenizerPath}'");
        if (DraftPath is not null && checkFiles && !Directory.Exists(DraftPath))
            p.Add($"{prefix}{nameof(DraftPath)}: no draft checkpoint folder (draft.json + draft.safetensors) at '{DraftPath}'");
        if (Drafting.TrainingFreeDrafts.Problem(DraftModel, NGram, DraftPath, checkFiles, prefix) is { } draftProblem) p.Add(draftProblem);
        if (!Runtime.ModelSpec.IsDeviceName(Device))
            p.Add($"{prefix}{nameof(Device)} must be auto, cpu or cuda[:N], got '{Device}'");
        if (Threads is { } t && t < 1) p.Add($"{prefix}{nameof(Threads)} must be >= 1 (or unset), got {t}");
        if (QueueCapacity < 1) p.Add($"{prefix}{nameof(QueueCapacity)} must be >= 1, got {QueueCapacity}");
        if (Workers < 1 || Workers > Math.Max(MaxBatchSize, 1)) p.Add($"{prefix}{nameof(Workers)} must be between 1 and {nameof(MaxBatchSize)} ({MaxBatchSize}), got {Workers}");
        if (MaxBatchSize < 1) p.Add($"{prefix}{nameof(MaxBatchSize)} must be >= 1 (1 = one request at a time), got {MaxBatchSize}");
        if (StreamIdleTimeout <= TimeSpan.Zero && StreamIdleTimeout != Timeout.InfiniteTimeSpan)
            p.Add($"{prefix}{nameof(StreamIdleTimeout)} must be positive (e.g. 00:00:30), got {StreamIdleTimeout}");
        if (DefaultMaxTokens < 1) p.Add($"{prefix}{nameof(DefaultMaxTokens)} must be >= 1, got {DefaultMaxTokens}");
        if (ChatTemplate is not null)
            try { ChatTemplates.Parse(ChatTemplate); }
            catch (ArgumentException) { p.Add($"{prefix}{nameof(ChatTemplate)}: unknown template '{ChatTemplate}' (use plain, llama2, llama3, chatml or mistral, or leave it unset to detect)"); }
        return p;
    }

    /// <summary>Throws <see cref="ArgumentException"/> listing every problem (see <see cref="Problems"/>).</summary>
    public BeagleModelOptions Validate(bool checkFiles = false)
    {
        var problems = Problems(checkFiles);
        if (problems.Count > 0) throw new ArgumentException("invalid Beagle model options: " + string.Join("; ", problems));
        return this;
    }

    /// <summary>What the composition root (<see cref="Runtime.ModelLoader"/>) loads for these options.</summary>
    public Runtime.ModelSpec ToModelSpec() => new()
    {
        Target = TargetPath, Tokenizer = TokenizerPath, Draft = DraftPath, UseBundledDraft = UseBundledDraft, Device = Device, Threads = Threads,
        Calibrate = CalibrateTreeBudget, DraftModel = DraftModel, NGram = NGram ? new Drafting.NGram.NGramOptions() : null,
    };

    /// <summary>A copy, so a registration is not changed by later edits of the caller's instance.</summary>
    public BeagleModelOptions Clone() => (BeagleModelOptions)MemberwiseClone();
}
