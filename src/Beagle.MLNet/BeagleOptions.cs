using Beagle.Decoding;

namespace Beagle.MLNet;

/// <summary>
/// What every Beagle estimator needs: the target to decode with, the prompt column and the decoding settings.
/// Everything here except the paths is stored inside a saved model (beagle/settings.json), so a reloaded pipeline
/// decodes exactly as the fitted one did. (Not BeagleModelOptions: that is the served model's options in
/// Beagle.SemanticKernel, and one name for two types broke code that imports both namespaces, CS0104.)
/// </summary>
public abstract class BeagleEstimatorOptions
{
    /// <summary>
    /// Target model: a llama2.c checkpoint (.bin), a Hugging Face model folder (config.json + safetensors), or a known
    /// model: stories5M (the default, bundled with the library) or stories260K.
    /// </summary>
    public string TargetPath { get; set; } = Beagle.Runtime.DefaultModels.Default;
    /// <summary>Tokenizer file; null = tokenizer.bin or tok512.bin next to a llama2.c target, the tokenizer of a Hugging Face folder.</summary>
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
    /// <summary>Confidence floor in [0, 1) for draft nodes (0 = off); null = the core's measured default.</summary>
    public double? TreeMinProb { get; set; }

    internal virtual void Validate()
    {
        if (string.IsNullOrWhiteSpace(TargetPath)) throw new ArgumentException("TargetPath is required: the target model the completions come from", nameof(TargetPath));
        if (!Beagle.Runtime.DefaultModels.IsKnownName(TargetPath) && !File.Exists(TargetPath) && !Directory.Exists(TargetPath)) throw new ArgumentException($"TargetPath: no file or folder at '{TargetPath}'", nameof(TargetPath));
        if (TokenizerPath is not null && !File.Exists(TokenizerPath) && !Directory.Exists(TokenizerPath)) throw new ArgumentException($"TokenizerPath: no file at '{TokenizerPath}'", nameof(TokenizerPath));
        if (string.IsNullOrWhiteSpace(InputColumnName)) throw new ArgumentException("InputColumnName must name the prompt column", nameof(InputColumnName));
        if (Threads < 1) throw new ArgumentOutOfRangeException(nameof(Threads), Threads, "threads must be >= 1");
        TreeBudget.Validate(BudgetNames);
        ToGenerationSettings().ToGenerationOptions(hasDraft: true);   // throws on bad sampling values
    }

    /// <summary>The Tree* properties as one budget: what they name overrides the default budget.</summary>
    public TreeBudgetOptions TreeBudget => new() { Tokens = TreeTokens, Depth = TreeDepth, TopK = TreeTopK, MinProb = TreeMinProb };

    /// <summary>The budget settings by this face's property names, for error messages.</summary>
    internal static readonly TreeBudgetSettingNames BudgetNames = new(nameof(TreeTokens), nameof(TreeDepth), nameof(TreeTopK), nameof(TreeMinProb));

    internal GenerationSettings ToGenerationSettings() => new()
    {
        MaxNewTokens = MaxNewTokens, Temperature = Temperature, TopK = TopK, TopP = TopP, Seed = Seed,
        StopStrings = StopStrings, UseDraft = UseDraft, TreeTokens = TreeTokens, TreeDepth = TreeDepth, TreeTopK = TreeTopK, TreeMinProb = TreeMinProb,
    };
}

/// <summary>Options of <see cref="BeagleCatalog.Generate"/>: decode with an existing draft, or none.</summary>
public sealed class BeagleGenerateOptions : BeagleEstimatorOptions
{
    /// <summary>Folder of a trained draft (DraftCheckpoint format); null = plain decoding of the target.</summary>
    public string? DraftPath { get; set; }
    /// <summary>With a known target (stories5M, stories260K) and no <see cref="DraftPath"/>: its bundled Beagle draft (default true).</summary>
    public bool UseBundledDraft { get; set; } = true;
    /// <summary>
    /// A smaller language model with the target's tokenizer drafts instead of a trained draft (no training): a llama2.c
    /// .bin file, a Hugging Face folder or a known name (stories260K). A saved model records its full path, as it does
    /// the target's. Null = none.
    /// </summary>
    public string? DraftModel { get; set; }
    /// <summary>Prompt lookup drafts instead of a trained draft (no model; pays where outputs copy the prompt).</summary>
    public bool NGram { get; set; }

    internal override void Validate()
    {
        base.Validate();
        if (DraftPath is not null && !Directory.Exists(DraftPath)) throw new ArgumentException($"DraftPath: no draft folder at '{DraftPath}'", nameof(DraftPath));
        if (Beagle.Drafting.TrainingFreeDrafts.Problem(DraftModel, NGram, DraftPath, checkFiles: true) is { } problem) throw new ArgumentException(problem, DraftModel is not null ? nameof(DraftModel) : nameof(NGram));
    }
}

/// <summary>
/// Options of <see cref="BeagleCatalog.TrainDraft"/>. The training fields mirror the core's
/// <see cref="Beagle.Training.TrainingOptions"/> (the options of <c>beagle train</c>, named in the comments) with the
/// same defaults; the training text comes from the <see cref="TextColumnName"/> column instead of files. The estimator
/// trains a draft for the target, writes the run to <see cref="OutputDir"/> (the draft itself to
/// <c>OutputDir/draft</c>) and returns a transformer that decodes speculatively with it.
/// </summary>
public sealed class BeagleTrainDraftOptions : BeagleEstimatorOptions
{
    /// <summary>The column of training text (one document per row).</summary>
    public string TextColumnName { get; set; } = "Text";
    /// <summary>--arch: "beagle" (two-stage block-attention training) or "eagle2" (the baseline).</summary>
    public string Architecture { get; set; } = "beagle";
    /// <summary>--epochs: total epochs; stage 1 takes <see cref="Stage1Epochs"/>, stage 2 the rest.</summary>
    public int Epochs { get; set; } = 10;
    /// <summary>--stage1-epochs: teacher-forced (block-attention) epochs before stage 2 (simulated drafting); null = half.</summary>
    public int? Stage1Epochs { get; set; }
    /// <summary>--window (k): stage-1 block size and depth weights.</summary>
    public int Window { get; set; } = 5;
    /// <summary>--sim-steps (s): simulated drafting steps of stage 2, at most <see cref="Window"/>.</summary>
    public int SimSteps { get; set; } = 4;
    /// <summary>--batch.</summary>
    public int BatchSize { get; set; } = 16;
    /// <summary>--seq-len: the texts are tokenised, concatenated and cut into training sequences of this many tokens.</summary>
    public int SeqLen { get; set; } = 256;
    /// <summary>--max-sequences: cap on training sequences (0 = all). Steps = epochs × floor(sequences / batch), so a small cap makes a quick fit.</summary>
    public int MaxSequences { get; set; }
    /// <summary>--lr.</summary>
    public double LearningRate { get; set; } = 1e-3;
    /// <summary>--warmup: linear warm-up steps, then constant.</summary>
    public int WarmupSteps { get; set; } = 50;
    /// <summary>--noise: feature noise scale.</summary>
    public double NoiseStd { get; set; } = 0.2;
    /// <summary>--draft-vocab N: reduced draft vocabulary of the N most frequent tokens (null = full).</summary>
    public int? DraftVocab { get; set; }
    /// <summary>--generate N: add N sequences sampled from the target itself to the column's texts.</summary>
    public int Generate { get; set; }
    /// <summary>--eval-prompts: held-out texts used to measure the acceptance length after each epoch (0 = none).</summary>
    public int EvalPrompts { get; set; } = 8;
    /// <summary>--no-plots when false.</summary>
    public bool Plots { get; set; } = true;
    /// <summary>--checkpoint-every: steps between checkpoints in OutputDir/checkpoint (also at each epoch end and on
    /// cancellation, which loses no step); bounds what a crash or a kill can lose. Must be >= 1.</summary>
    public int CheckpointEverySteps { get; set; } = 500;
    /// <summary>--log-every: steps between progress lines in mlContext.Log.</summary>
    public int LogEverySteps { get; set; } = 10;
    /// <summary>--resume: continue the run in <see cref="OutputDir"/> from its checkpoint (same data and settings). Fit
    /// refuses (InvalidOperationException saying where it looked) when there is no checkpoint, rather than start over.</summary>
    public bool Resume { get; set; }
    /// <summary>--seed of the trainer.</summary>
    public int TrainSeed { get; set; }
    /// <summary>--out: the run folder (checkpoint/, metrics.jsonl, plots/, features/, draft/). Null = a fresh temporary folder.</summary>
    public string? OutputDir { get; set; }
    /// <summary>Cancels Fit: training stops at the next step, saves its checkpoint, and Fit throws OperationCanceledException.</summary>
    public CancellationToken CancellationToken { get; set; }

    internal override void Validate()
    {
        base.Validate();
        if (string.IsNullOrWhiteSpace(TextColumnName)) throw new ArgumentException("TextColumnName must name the training-text column", nameof(TextColumnName));
        if (!Beagle.Drafting.DraftArchitectures.TryGet(Architecture, out var arch) || !arch.IsTrainable)
            throw new ArgumentException($"Architecture must be one of {string.Join(", ", Beagle.Drafting.DraftArchitectures.Trainable.Select(n => $"\"{n}\""))}, got \"{Architecture}\"", nameof(Architecture));
        if (Epochs < 1) throw new ArgumentOutOfRangeException(nameof(Epochs), Epochs, "epochs must be >= 1");
        if (Stage1Epochs is { } s1 && (s1 < 0 || s1 > Epochs)) throw new ArgumentOutOfRangeException(nameof(Stage1Epochs), s1, "stage-1 epochs must be in [0, Epochs]");
        if (Window < 1) throw new ArgumentOutOfRangeException(nameof(Window), Window, "window must be >= 1");
        if (SimSteps < 1 || SimSteps > Window) throw new ArgumentOutOfRangeException(nameof(SimSteps), SimSteps, $"sim steps must be in [1, Window={Window}]");
        if (BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "batch size must be >= 1");
        if (SeqLen < 2) throw new ArgumentOutOfRangeException(nameof(SeqLen), SeqLen, "sequence length must be >= 2");
        if (MaxSequences < 0) throw new ArgumentOutOfRangeException(nameof(MaxSequences), MaxSequences, "max sequences must be >= 0 (0 = all)");
        if (!(LearningRate > 0)) throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "learning rate must be > 0");
        if (CheckpointEverySteps < 1) throw new ArgumentOutOfRangeException(nameof(CheckpointEverySteps), CheckpointEverySteps, "steps between checkpoints must be >= 1");
        if (LogEverySteps < 1) throw new ArgumentOutOfRangeException(nameof(LogEverySteps), LogEverySteps, "steps between progress lines must be >= 1");
        // The core checks the rest (with the CLI's option names).
        ToTrainingOptions("validation", "validation.jsonl", checkData: false).Validate();
    }

    /// <summary>The core trainer's options for a run in <paramref name="outputDir"/> on the texts in <paramref name="dataPath"/>.</summary>
    internal Beagle.Training.TrainingOptions ToTrainingOptions(string outputDir, string dataPath, bool checkData = true)
    {
        // A known model name is recorded as its files (the bundled stories5M, or stories260K's), like every face does.
        var files = Beagle.Runtime.ModelLoader.Resolve(new Beagle.Runtime.ModelSpec { Target = TargetPath, Tokenizer = TokenizerPath, NoDraft = true });
        return ToTrainingOptions(outputDir, dataPath, checkData, files.Target, files.Tokenizer);
    }

    Beagle.Training.TrainingOptions ToTrainingOptions(string outputDir, string dataPath, bool checkData, string target, string? tokenizer) => new()
    {
        Architecture = Architecture, TargetPath = target, TokenizerPath = tokenizer, OutputDir = outputDir,
        // Validation runs before there is a data file: stand in with --generate, which needs no file.
        DataPaths = checkData ? [dataPath] : [], Generate = checkData ? Generate : Math.Max(1, Generate),
        Epochs = Epochs, Stage1Epochs = Stage1Epochs, WindowK = Window, SimSteps = SimSteps, BatchSize = BatchSize, SeqLen = SeqLen,
        MaxSequences = MaxSequences, LearningRate = LearningRate, WarmupSteps = WarmupSteps, NoiseStd = NoiseStd, DraftVocab = DraftVocab,
        EvalPrompts = EvalPrompts, Plots = Plots, CheckpointEverySteps = CheckpointEverySteps, LogEverySteps = LogEverySteps,
        Resume = Resume, Seed = TrainSeed,
    };
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
    public double? TreeMinProb { get; init; }

    public GenerationOptions ToGenerationOptions(bool hasDraft) => new GenerationOptions
    {
        MaxNewTokens = MaxNewTokens,
        Sampling = new SamplingOptions { Temperature = Temperature, TopK = TopK, TopP = TopP, Seed = Seed },
        StopStrings = StopStrings,
        Speculative = hasDraft && UseDraft
            ? new SpeculativeOptions { Tree = new TreeBudgetOptions { Tokens = TreeTokens, Depth = TreeDepth, TopK = TreeTopK, MinProb = TreeMinProb }.Validate(BeagleEstimatorOptions.BudgetNames) }
            : null,
    }.Validate();
}
