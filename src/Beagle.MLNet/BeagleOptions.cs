using Beagle.Decoding;

namespace Beagle.MLNet;

/// <summary>
/// What every Beagle estimator needs: the target to decode with, the prompt column and the decoding settings.
/// Everything here except the paths is stored inside a saved model (beagle/model.json), so a reloaded pipeline
/// decodes exactly as the fitted one did.
/// </summary>
public abstract class BeagleModelOptions
{
    /// <summary>Target model: a llama2.c checkpoint (.bin) (Hugging Face folders once the core's TargetLoader lands).</summary>
    public string TargetPath { get; set; } = "";
    /// <summary>Tokenizer file; null = tok512.bin next to a llama2.c target.</summary>
    public string? TokenizerPath { get; set; }
    /// <summary>"cpu" (default), "auto" or "cuda[:N]".</summary>
    public string Device { get; set; } = "cpu";
    /// <summary>libtorch intra-op threads of the engine thread. 1 is fastest for small models on this kind of CPU.</summary>
    public int Threads { get; set; } = 1;

    /// <summary>The text column holding the prompt.</summary>
    public string InputColumnName { get; set; } = "Prompt";
    public int MaxNewTokens { get; set; } = 64;
    /// <summary>0 = greedy (deterministic: the same prompt always gives the same completion).</summary>
    public float Temperature { get; set; }
    public int TopK { get; set; }
    public float TopP { get; set; } = 1f;
    /// <summary>Seed of the sampler for every row; null = fresh randomness per row.</summary>
    public int? Seed { get; set; }
    public string[] StopStrings { get; set; } = [];
    /// <summary>Decode speculatively when a draft is present (false = plain decoding even with a draft).</summary>
    public bool UseDraft { get; set; } = true;
    /// <summary>Draft-tree budget; null = the core's measured default (see SpeculativeOptions).</summary>
    public int? TreeTokens { get; set; }
    public int? TreeDepth { get; set; }
    public int? TreeTopK { get; set; }

    internal virtual void Validate()
    {
        if (string.IsNullOrWhiteSpace(TargetPath)) throw new ArgumentException("TargetPath is required: the target model the completions come from", nameof(TargetPath));
        if (!File.Exists(TargetPath) && !Directory.Exists(TargetPath)) throw new ArgumentException($"TargetPath: no file or folder at '{TargetPath}'", nameof(TargetPath));
        if (TokenizerPath is not null && !File.Exists(TokenizerPath)) throw new ArgumentException($"TokenizerPath: no file at '{TokenizerPath}'", nameof(TokenizerPath));
        if (string.IsNullOrWhiteSpace(InputColumnName)) throw new ArgumentException("InputColumnName must name the prompt column", nameof(InputColumnName));
        if (Threads < 1) throw new ArgumentOutOfRangeException(nameof(Threads), Threads, "threads must be >= 1");
        ToGenerationSettings().ToGenerationOptions(hasDraft: true);   // throws on bad sampling or tree values
    }

    internal GenerationSettings ToGenerationSettings() => new()
    {
        MaxNewTokens = MaxNewTokens, Temperature = Temperature, TopK = TopK, TopP = TopP, Seed = Seed,
        StopStrings = StopStrings, UseDraft = UseDraft, TreeTokens = TreeTokens, TreeDepth = TreeDepth, TreeTopK = TreeTopK,
    };
}

/// <summary>Options of <see cref="BeagleCatalog.Generate"/>: decode with an existing draft, or none.</summary>
public sealed class BeagleGenerateOptions : BeagleModelOptions
{
    /// <summary>Folder of a trained draft (DraftCheckpoint format); null = plain decoding of the target.</summary>
    public string? DraftPath { get; set; }

    internal override void Validate()
    {
        base.Validate();
        if (DraftPath is not null && !Directory.Exists(DraftPath)) throw new ArgumentException($"DraftPath: no draft folder at '{DraftPath}'", nameof(DraftPath));
    }
}

/// <summary>
/// Options of <see cref="BeagleCatalog.TrainDraft"/>. They mirror <c>beagle train</c>: the estimator trains a draft for
/// the target on the text column, writes it to <see cref="OutputDir"/> and returns a transformer that decodes with it.
/// </summary>
public sealed class BeagleTrainDraftOptions : BeagleModelOptions
{
    /// <summary>The column of training text (one document per row).</summary>
    public string TextColumnName { get; set; } = "Text";
    /// <summary>"beagle" (cross-attention draft) or "eagle2".</summary>
    public string Architecture { get; set; } = "beagle";
    public int Epochs { get; set; } = 1;
    /// <summary>Stage-1 (teacher-forced) epochs before stage 2 (simulated drafting).</summary>
    public int Stage1Epochs { get; set; } = 1;
    /// <summary>Training window (tokens per example).</summary>
    public int Window { get; set; } = 64;
    /// <summary>Simulated draft steps in stage 2.</summary>
    public int SimSteps { get; set; } = 2;
    public int BatchSize { get; set; } = 8;
    /// <summary>Maximum sequence length of a training document (longer ones are cut).</summary>
    public int SeqLen { get; set; } = 256;
    public double LearningRate { get; set; } = 1e-3;
    /// <summary>Stop after this many optimizer steps (null = run all epochs). Small values make a quick demo fit.</summary>
    public int? MaxSteps { get; set; }
    /// <summary>Seed of the trainer.</summary>
    public int TrainSeed { get; set; } = 1234;
    /// <summary>Where the trained draft is written (also embedded in a saved model). Null = a fresh temporary folder.</summary>
    public string? OutputDir { get; set; }
    /// <summary>Cancels Fit (training stops at the next step and Fit throws OperationCanceledException).</summary>
    public CancellationToken CancellationToken { get; set; }

    internal override void Validate()
    {
        base.Validate();
        if (string.IsNullOrWhiteSpace(TextColumnName)) throw new ArgumentException("TextColumnName must name the training-text column", nameof(TextColumnName));
        if (Architecture is not ("beagle" or "eagle2")) throw new ArgumentException($"Architecture must be \"beagle\" or \"eagle2\", got \"{Architecture}\"", nameof(Architecture));
        if (Epochs < 1) throw new ArgumentOutOfRangeException(nameof(Epochs), Epochs, "epochs must be >= 1");
        if (Stage1Epochs < 0 || Stage1Epochs > Epochs) throw new ArgumentOutOfRangeException(nameof(Stage1Epochs), Stage1Epochs, "stage-1 epochs must be in [0, Epochs]");
        if (Window < 2) throw new ArgumentOutOfRangeException(nameof(Window), Window, "window must be >= 2");
        if (SimSteps < 1) throw new ArgumentOutOfRangeException(nameof(SimSteps), SimSteps, "sim steps must be >= 1");
        if (BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "batch size must be >= 1");
        if (SeqLen < 2) throw new ArgumentOutOfRangeException(nameof(SeqLen), SeqLen, "sequence length must be >= 2");
        if (!(LearningRate > 0)) throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "learning rate must be > 0");
        if (MaxSteps is { } m && m < 1) throw new ArgumentOutOfRangeException(nameof(MaxSteps), m, "max steps must be >= 1");
    }
}

/// <summary>The decoding settings stored in a saved model (JSON).</summary>
internal sealed record GenerationSettings
{
    public int MaxNewTokens { get; init; } = 64;
    public float Temperature { get; init; }
    public int TopK { get; init; }
    public float TopP { get; init; } = 1f;
    public int? Seed { get; init; }
    public string[] StopStrings { get; init; } = [];
    public bool UseDraft { get; init; } = true;
    public int? TreeTokens { get; init; }
    public int? TreeDepth { get; init; }
    public int? TreeTopK { get; init; }

    public GenerationOptions ToGenerationOptions(bool hasDraft) => new GenerationOptions
    {
        MaxNewTokens = MaxNewTokens,
        Sampling = new SamplingOptions { Temperature = Temperature, TopK = TopK, TopP = TopP, Seed = Seed },
        StopStrings = StopStrings,
        Speculative = hasDraft && UseDraft ? new SpeculativeOptions { TreeTokens = TreeTokens, TreeDepth = TreeDepth, TreeTopK = TreeTopK } : null,
    }.Validate();
}
