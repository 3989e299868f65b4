using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Beagle.Drafting;

namespace Beagle.Training;

/// <summary>
/// Everything `beagle train` takes, one field per CLI option (kebab-case names in comments). Validated by
/// <see cref="Validate"/>. Defaults are chosen for stories260K (dim 64, 5 layers, vocab 512, context 512) on a 2-core
/// CPU; the paper's 7B settings are quoted where they differ.
/// </summary>
public sealed record TrainingOptions
{
    /// <summary>--arch: a trainable registered architecture (<see cref="DraftArchitectures.Trainable"/>): "beagle" (two-stage block-attention training) or "eagle2" (the baseline).</summary>
    public string Architecture { get; init; } = DraftConfig.Beagle;
    /// <summary>--target: a known model name, llama2.c .bin checkpoint or Hugging Face folder (used by <see cref="DraftTrainer.TrainAsync(TrainingOptions, IProgress{TrainingProgress}?, CancellationToken)"/>).</summary>
    public string? TargetPath { get; init; }
    /// <summary>--tokenizer: tokenizer file (default: the target's, see ModelLoader).</summary>
    public string? TokenizerPath { get; init; }
    /// <summary>--data (repeatable): text, jsonl or chat jsonl files.</summary>
    public IReadOnlyList<string> DataPaths { get; init; } = [];
    /// <summary>--generate N: add N sequences sampled from the target itself.</summary>
    public int Generate { get; init; }
    /// <summary>--generate-tokens: new tokens per generated sequence.</summary>
    public int GenerateMaxTokens { get; init; } = 256;
    /// <summary>--generate-temperature (0 = greedy).</summary>
    public float GenerateTemperature { get; init; } = 1.0f;
    /// <summary>
    /// --generate-prompt-tokens P: 0 (default) samples each generated sequence from BOS; P &gt; 0 continues the first P
    /// tokens (BOS included) of the --data documents instead, distinct prompts in file order — the target regenerates
    /// the data, so the draft learns what the target says after real text (with temperature 0: its greedy output,
    /// which is what greedy speculative decoding drafts against).
    /// </summary>
    public int GeneratePromptTokens { get; init; }
    /// <summary>
    /// --generate-prompt-stride S: with S &gt; 0, prompts are also cut at P + S, P + 2S, … tokens into each document
    /// (more, and mid-story, contexts from the same data). 0 (default): document starts only.
    /// </summary>
    public int GeneratePromptStride { get; init; }
    /// <summary>--out: run folder (checkpoint/, metrics.jsonl, plots/, draft/).</summary>
    public required string OutputDir { get; init; }
    /// <summary>--feature-cache: root of feature caches; default &lt;out&gt;/features.</summary>
    public string? FeatureCacheDir { get; init; }
    /// <summary>--max-sequences: cap on packed training sequences (0 = all).</summary>
    public int MaxSequences { get; init; }

    /// <summary>--seq-len. 256: TinyStories documents are ~200 tokens, so 256 packs about one story per row while
    /// leaving 64+ windows per sequence; the paper uses 2048 for 7B targets.</summary>
    public int SeqLen { get; init; } = 256;
    /// <summary>--batch (the paper's 16).</summary>
    public int BatchSize { get; init; } = 16;
    /// <summary>--epochs: total epochs; stage 1 takes <see cref="Stage1Epochs"/>, stage 2 the rest (paper 10 + 10).</summary>
    public int Epochs { get; init; } = 10;
    /// <summary>--stage1-epochs; null = half of the epochs (the paper's split). Ignored for eagle2.</summary>
    public int? Stage1Epochs { get; init; }
    /// <summary>--lr. 1e-3: a 0.1M-parameter draft tolerates a far higher rate than the paper's 3e-5 for 7B.</summary>
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>--warmup: linear warm-up steps, then constant (paper 2000 for 7B; ~1/3 epoch here).</summary>
    public int WarmupSteps { get; init; } = 50;
    /// <summary>
    /// --decay-epochs: over the last N epochs the rate falls linearly to zero ("warm-up, stable, decay"); 0 = constant
    /// to the end. The schedule depends only on the step and the total, so a run resumed with more epochs and a decay
    /// anneals a finished constant-rate run (docs/training.md).
    /// </summary>
    public int DecayEpochs { get; init; }
    /// <summary>--max-grad-norm (paper 0.5).</summary>
    public double MaxGradNorm { get; init; } = 0.5;
    /// <summary>--weight-decay (EAGLE uses 0).</summary>
    public double WeightDecay { get; init; }
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.95;

    /// <summary>--window (k): block size of stage 1 and the depth weights beta_i = k - i + 1 (paper k = 5 final).</summary>
    public int WindowK { get; init; } = 5;
    /// <summary>--sim-steps (s): stage-2 simulated drafting steps, at most k (paper 4).</summary>
    public int SimSteps { get; init; } = 4;
    /// <summary>--full-backprop: keep the graph through all simulated steps (default: detach, backward per step).</summary>
    public bool FullBackprop { get; init; }
    /// <summary>--noise: feature noise scale (Beagle: Gaussian std; EAGLE-2: uniform width). 0.2 in both papers.</summary>
    public double NoiseStd { get; init; } = 0.2;
    /// <summary>--ce-weight; null = 1.0 (beagle) or 0.1 (eagle2).</summary>
    public double? CeWeight { get; init; }
    /// <summary>--vloss-weight; null = 10 (beagle, relative to CE) or 1.0 (eagle2).</summary>
    public double? VLossWeight { get; init; }
    /// <summary>--ttt-steps: EAGLE-2 training-time-test unroll (1 = plain EAGLE-2 training).</summary>
    public int EagleTttSteps { get; init; } = 1;
    /// <summary>--draft-vocab N: reduced output vocabulary of the N most frequent tokens of the data (null = full).</summary>
    public int? DraftVocab { get; init; }

    /// <summary>--seed: initialisation, data order, window offsets and noise all derive from it.</summary>
    public int Seed { get; init; }
    /// <summary>--checkpoint-every: steps between checkpoints (also written at each epoch end and when the run stops). A
    /// stop request (Ctrl+C, host shutdown, cancellation) loses no step; this bounds what a crash or a kill can lose.</summary>
    public int CheckpointEverySteps { get; init; } = 500;
    /// <summary>--log-every: steps between progress reports and metrics.jsonl lines.</summary>
    public int LogEverySteps { get; init; } = 10;
    /// <summary>--resume: continue from &lt;out&gt;/checkpoint (or the copy an interrupted save left aside). Without a
    /// checkpoint the run refuses to start rather than start over (<see cref="DraftTrainer.FindCheckpoint"/>).</summary>
    public bool Resume { get; init; }
    /// <summary>Stop (checkpoint saved, like a cancellation) once this global step is reached. For tests and time-boxed runs.</summary>
    public long? StopAfterSteps { get; init; }

    /// <summary>--eval (repeatable): held-out text whose documents give the evaluation prompts. Null or empty: the last
    /// <see cref="EvalPrompts"/> documents of the training data are held out instead (and removed from training).</summary>
    public IReadOnlyList<string> EvalPaths { get; init; } = [];
    /// <summary>--eval-prompts: held-out documents used as prompts for the per-epoch evaluation (0 = no evaluation).</summary>
    public int EvalPrompts { get; init; } = 8;
    public int EvalPromptTokens { get; init; } = 32;
    public int EvalMaxNewTokens { get; init; } = 64;
    /// <summary>Tree budget of the evaluation (null = the decoder's measured default).</summary>
    public int? EvalTreeTokens { get; init; } = 16;
    public int? EvalTreeDepth { get; init; } = 5;
    public int? EvalTreeTopK { get; init; } = 4;
    /// <summary>--no-plots turns PNG plots off.</summary>
    public bool Plots { get; init; } = true;
    /// <summary>Sequences per feature-cache shard.</summary>
    public int ShardSize { get; init; } = 256;

    /// <summary>The registered architecture <see cref="Architecture"/> names (InvalidDataException when none).</summary>
    [JsonIgnore] public DraftArchitecture Arch => DraftArchitectures.Get(Architecture);
    DraftTrainingDefaults Defaults => DraftArchitectures.TryGet(Architecture, out var a) ? a.TrainingDefaults : DraftTrainingDefaults.Standard;
    [JsonIgnore] public int EffectiveStage1Epochs => Defaults.TwoStage ? Stage1Epochs ?? Epochs / 2 : Epochs;
    [JsonIgnore] public double EffectiveCeWeight => CeWeight ?? Defaults.CeWeight;
    [JsonIgnore] public double EffectiveVLossWeight => VLossWeight ?? Defaults.VLossWeight;

    public TrainingOptions Validate()
    {
        static void Check(bool ok, string name, string message) { if (!ok) throw new ArgumentException($"{name}: {message}", name); }
        Check(DraftArchitectures.TryGet(Architecture, out var arch) && arch.IsTrainable, "arch",
            $"must be one of {string.Join(", ", DraftArchitectures.Trainable.Select(n => $"'{n}'"))}, got '{Architecture}'");
        Check(!string.IsNullOrWhiteSpace(OutputDir), "out", "an output folder is required");
        Check(DataPaths.Count > 0 || Generate > 0, "data", "give at least one --data file or --generate N");
        foreach (var p in DataPaths) Check(File.Exists(p), "data", $"file not found: {p}");
        foreach (var p in EvalPaths) Check(File.Exists(p), "eval", $"file not found: {p}");
        Check(Generate >= 0, "generate", "must be >= 0");
        Check(GenerateMaxTokens >= 1, "generate-tokens", "must be >= 1");
        Check(GenerateTemperature >= 0 && float.IsFinite(GenerateTemperature), "generate-temperature", "must be a finite number >= 0");
        Check(GeneratePromptTokens >= 0, "generate-prompt-tokens", "must be >= 0 (0 = start from BOS)");
        Check(GeneratePromptTokens == 0 || DataPaths.Count > 0, "generate-prompt-tokens", "takes its prompts from --data: give at least one --data file");
        Check(GeneratePromptStride >= 0, "generate-prompt-stride", "must be >= 0 (0 = document starts only)");
        Check(GeneratePromptStride == 0 || GeneratePromptTokens > 0, "generate-prompt-stride", "needs --generate-prompt-tokens");
        Check(MaxSequences >= 0, "max-sequences", "must be >= 0 (0 = all)");
        Check(SeqLen >= 2, "seq-len", "must be at least 2");
        Check(BatchSize >= 1, "batch", "must be >= 1");
        Check(Epochs >= 1, "epochs", "must be >= 1");
        Check(Stage1Epochs is null || (Stage1Epochs >= 0 && Stage1Epochs <= Epochs), "stage1-epochs", $"must be in [0, epochs={Epochs}]");
        Check(LearningRate > 0 && double.IsFinite(LearningRate), "lr", "must be a positive number");
        Check(WarmupSteps >= 0, "warmup", "must be >= 0");
        Check(DecayEpochs >= 0 && DecayEpochs <= Epochs, "decay-epochs", $"must be in [0, epochs={Epochs}]");
        Check(MaxGradNorm > 0, "max-grad-norm", "must be > 0");
        Check(WeightDecay >= 0, "weight-decay", "must be >= 0");
        Check(Beta1 is >= 0 and < 1 && Beta2 is >= 0 and < 1, "betas", "must be in [0, 1)");
        Check(WindowK >= 1, "window", "must be >= 1");
        Check(SimSteps >= 1 && SimSteps <= WindowK, "sim-steps", $"must be in [1, window={WindowK}]");
        Check(NoiseStd >= 0, "noise", "must be >= 0");
        Check(CeWeight is null or >= 0, "ce-weight", "must be >= 0");
        Check(VLossWeight is null or >= 0, "vloss-weight", "must be >= 0");
        Check(EagleTttSteps >= 1, "ttt-steps", "must be >= 1");
        Check(DraftVocab is null or >= 2, "draft-vocab", "must be >= 2");
        Check(CheckpointEverySteps >= 1, "checkpoint-every", "must be >= 1");
        Check(LogEverySteps >= 1, "log-every", "must be >= 1");
        Check(StopAfterSteps is null or >= 0, "stop-after", "must be >= 0");
        Check(EvalPrompts >= 0 && EvalPromptTokens >= 1 && EvalMaxNewTokens >= 1, "eval", "prompts >= 0, prompt tokens and new tokens >= 1");
        Check(ShardSize >= 1, "shard-size", "must be >= 1");
        return this;
    }

    static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = false,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>The options as JSON (snake_case), for provenance in draft.json and the checkpoint.</summary>
    public JsonObject ToJson() => JsonSerializer.SerializeToNode(this, Json)!.AsObject();
}

/// <summary>Progress of a training run, reported every <see cref="TrainingOptions.LogEverySteps"/> steps.</summary>
/// <param name="AcceptanceByDepth">Training-time estimate: top-1 agreement of draft and target per window offset
/// (stage 1), per simulated step (stage 2) or per unrolled step (EAGLE-2), averaged over the logging interval.</param>
public sealed record TrainingProgress(int Epoch, int Epochs, int Stage, long Step, long TotalSteps, double Loss, double CrossEntropy,
    double RegressionLoss, double[] AcceptanceByDepth, double LearningRate, double TokensPerSecond, TimeSpan Eta, string? Message = null)
{
    /// <summary>The step of the latest checkpoint on disk (saved or resumed from in this run), or null before the first.</summary>
    public long? CheckpointStep { get; init; }

    /// <summary>A message-only report (data preparation, warnings): no step figures.</summary>
    public static TrainingProgress Note(string message) => new(0, 0, 0, 0, 0, double.NaN, double.NaN, double.NaN, [], 0, 0, TimeSpan.Zero, message);
}

/// <summary>A run's checkpoint found by <see cref="DraftTrainer.FindCheckpoint"/>.</summary>
/// <param name="Directory">The checkpoint folder (<c>&lt;out&gt;/checkpoint</c>).</param>
/// <param name="Step">The global step it was saved at: a resumed run continues with the step after it.</param>
/// <param name="RecoveredFrom">The aside copy put back because a save was interrupted, or null.</param>
public sealed record TrainingCheckpoint(string Directory, long Step, string? RecoveredFrom);

/// <summary>Per-epoch summary, also a line of metrics.jsonl and a point of the plots.</summary>
public sealed record EpochMetrics(int Epoch, int Stage, long Step, double Loss, double[] TrainAcceptanceByDepth,
    double? EvalAcceptanceLength, double[]? EvalAcceptanceByDepth, string? EvalError);

/// <summary>What <see cref="DraftTrainer.Train"/> returns.</summary>
/// <param name="Completed">False when stopped early (cancellation or <see cref="TrainingOptions.StopAfterSteps"/>);
/// the checkpoint then allows <see cref="TrainingOptions.Resume"/>.</param>
public sealed record TrainingResult(string OutputDir, string? DraftDir, long Steps, bool Completed, double LastLoss,
    IReadOnlyList<EpochMetrics> Epochs, bool FeatureCacheReused)
{
    /// <summary>The step of the last checkpoint written (or resumed from); equals <see cref="Steps"/> for a stopped run.</summary>
    public long? CheckpointStep { get; init; }
}
