using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Runtime;
using Beagle.Tokenization;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Beagle.Training;

/// <summary>Loss and statistics of one optimiser step.</summary>
/// <param name="AgreementByDepth">Sum of top-1 agreements per depth, and the count behind each sum.</param>
public sealed record StepStats(double Loss, double CrossEntropy, double RegressionLoss, double[] AgreementByDepth, double[] CountByDepth);

/// <summary>
/// The training loop shared by <see cref="TwoStageTrainer"/> (Beagle) and <see cref="Eagle2Trainer"/>: data, feature
/// cache, AdamW with warm-up then constant LR and grad-norm clipping, checkpoints (atomic, with optimiser state, data
/// position and schedule), exact resume, cancellation, progress, metrics.jsonl, plots, per-epoch evaluation with the real
/// tree decoder, and the final draft. Subclasses implement one step (forward and backward) on a batch.
///
/// Determinism: draft initialisation uses torch's global RNG seeded with <see cref="TrainingOptions.Seed"/>; every
/// random choice of a step (window offset, noise) comes from generators seeded by (seed, global step), and the data
/// order is a pure function of (seed, epoch). So the checkpoint needs only the step and the optimiser state for a
/// resumed run to repeat an uninterrupted one exactly.
/// </summary>
public abstract class DraftTrainer
{
    protected LlamaModel Target { get; }
    protected ITokenizer Tokenizer { get; }
    protected TrainingOptions Options { get; }
    /// <summary>[Vd] int64 target ids of the reduced draft vocabulary, or null.</summary>
    protected Tensor? KeptIds { get; private set; }

    protected DraftTrainer(LlamaModel target, ITokenizer tokenizer, TrainingOptions options)
    {
        Target = target; Tokenizer = tokenizer; Options = options.Validate();
        if (tokenizer.VocabSize != target.Config.VocabSize)
            throw new ArgumentException($"tokenizer vocabulary ({tokenizer.VocabSize}) differs from the target's ({target.Config.VocabSize})");
    }

    /// <summary>The trainer for <see cref="TrainingOptions.Architecture"/>.</summary>
    public static DraftTrainer Create(LlamaModel target, ITokenizer tokenizer, TrainingOptions options) =>
        options.Validate().Arch.CreateTrainer(target, tokenizer, options);

    /// <summary>
    /// Loads the target and tokenizer named in the options (<see cref="TrainingOptions.TargetPath"/>: a known model name,
    /// a llama2.c file or a Hugging Face folder) on the CPU and trains on a worker thread.
    /// </summary>
    public static Task<TrainingResult> TrainAsync(TrainingOptions options, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        if (options.TargetPath is null) throw new ArgumentException("TargetPath is required (or pass a ModelSpec)", nameof(options));
        return TrainAsync(new ModelSpec { Target = options.TargetPath, Tokenizer = options.TokenizerPath, Device = "cpu", NoDraft = true }, options, progress, cancellationToken);
    }

    /// <summary>
    /// Loads <paramref name="target"/> through the composition root (<see cref="ModelLoader"/>: every target the runtime
    /// loads, on its device) on a worker thread and trains there; the target is freed when training ends. The spec's
    /// draft settings are ignored (training makes the draft).
    /// </summary>
    public static Task<TrainingResult> TrainAsync(ModelSpec target, TrainingOptions options, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        target = target with { NoDraft = true };
        target.Validate();
        return Task.Factory.StartNew(() =>
        {
            using var loaded = ModelLoader.LoadTarget(target, cancellationToken);
            return Create(loaded.Model, loaded.Tokenizer, options).Train(progress, cancellationToken);
        }, cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>Trains with an already loaded target on a worker thread (TorchSharp state stays on that thread).</summary>
    public static Task<TrainingResult> TrainAsync(LlamaModel target, ITokenizer tokenizer, TrainingOptions options,
        IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var trainer = Create(target, tokenizer, options);
        return Task.Factory.StartNew(() => trainer.Train(progress, cancellationToken), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>The stage (1 or 2) of a 0-based epoch. EAGLE-2 has a single stage (reported as 1).</summary>
    protected int StageOf(int epoch) => epoch < Options.EffectiveStage1Epochs ? 1 : 2;

    /// <summary>Depths reported in <see cref="StepStats"/>.</summary>
    protected abstract int Depths { get; }

    /// <summary>
    /// One step on a batch: forward, loss, backward (gradients accumulated into the draft's parameters; the caller
    /// zeroes, clips and steps). tokens [B, T] int64, states [B, T, D] float32 true states. A step made of parts (stage 2's
    /// simulated steps, EAGLE-2's unrolled steps, a forward and its backward) calls <see cref="ThrowIfStopping"/> between
    /// them, so that a stop request does not wait for the whole step; the caller then drops the step.
    /// </summary>
    protected abstract StepStats Step(DraftModelBase draft, Tensor tokens, Tensor states, int stage, long globalStep, CancellationToken stopping);

    /// <summary>
    /// The step <see cref="TrainBench"/> measures: the architecture's unrolled multi-step training with
    /// <paramref name="simSteps"/> steps (forward and backward, no optimiser); unsupported by default.
    /// </summary>
    internal virtual StepStats BenchStep(DraftModelBase draft, Tensor tokens, Tensor states, long globalStep, int simSteps, bool fullBackprop) =>
        throw new NotSupportedException($"{GetType().Name} has no multi-step training to measure");

    /// <summary>One step, for tests and benchmarks (forward and backward only; no optimiser).</summary>
    internal StepStats RunStep(DraftModelBase draft, Tensor tokens, Tensor states, int stage, long globalStep) => Step(draft, tokens, states, stage, globalStep, default);

    /// <summary>Test hook: called at every stop check inside a step with (global step, part), before the token is checked.</summary>
    internal Action<long, int>? OnStopCheck { get; set; }

    /// <summary>
    /// A stop check between two parts of step <paramref name="globalStep"/>: throws OperationCanceledException when
    /// <paramref name="stopping"/> is cancelled. The step's partial gradients are then discarded by the caller and the
    /// weights and optimiser state stay those of the step before, which is what the checkpoint records.
    /// </summary>
    protected void ThrowIfStopping(CancellationToken stopping, long globalStep, int part)
    {
        OnStopCheck?.Invoke(globalStep, part);
        stopping.ThrowIfCancellationRequested();
    }

    /// <summary>A torch generator for the randomness of one step (noise), seeded by (seed, step, salt).</summary>
    protected torch.Generator StepGenerator(long globalStep, int salt) => new((ulong)Seeds.Mix(Options.Seed, globalStep, salt), Target.Device);
    /// <summary>A .NET RNG for the choices of one step (window offset), seeded by (seed, step, salt).</summary>
    protected Random StepRandom(long globalStep, int salt) => new(Seeds.Mix(Options.Seed, globalStep, salt));

    string CheckpointDir => Path.Combine(Options.OutputDir, "checkpoint");

    static readonly object GlobalRngLock = new();

    /// <summary>
    /// The checkpoint of the run in <paramref name="outputDir"/> (its <c>checkpoint/</c> folder), or null when there is
    /// none. A checkpoint save interrupted between its two renames is repaired first (<see cref="AtomicFile.RecoverDirectory"/>):
    /// the previous checkpoint, set aside as <c>.checkpoint.old-*</c>, is put back and reported in RecoveredFrom.
    /// Throws InvalidDataException for a checkpoint folder whose state.json is missing or unreadable.
    /// </summary>
    public static TrainingCheckpoint? FindCheckpoint(string outputDir)
    {
        string dir = Path.Combine(Path.GetFullPath(outputDir), "checkpoint");
        string? recovered = AtomicFile.RecoverDirectory(dir);
        if (!Directory.Exists(dir)) return null;
        string statePath = Path.Combine(dir, "state.json");
        try
        {
            var state = JsonNode.Parse(File.ReadAllText(statePath))!.AsObject();
            return new TrainingCheckpoint(dir, (long)state["step"]!, recovered);
        }
        catch (Exception e) when (e is IOException or JsonException or InvalidOperationException or FormatException or NullReferenceException)
        {
            throw new InvalidDataException($"the checkpoint in '{dir}' is unreadable ({statePath}: {e.Message}); move it away to start afresh", e);
        }
    }

    /// <summary>
    /// The learning rate for optimiser step <paramref name="step"/> (0-based) of <paramref name="totalSteps"/>: linear
    /// warm-up over <see cref="TrainingOptions.WarmupSteps"/>, constant, then (with
    /// <see cref="TrainingOptions.DecayEpochs"/>) linear decay over the last DecayEpochs × <paramref name="stepsPerEpoch"/>
    /// steps, ending one step above zero. A pure function of the step, so resuming reproduces it.
    /// </summary>
    public static double LearningRateAt(TrainingOptions o, long step, long totalSteps, int stepsPerEpoch)
    {
        double warm = o.WarmupSteps == 0 ? 1.0 : Math.Min(1.0, (step + 1.0) / o.WarmupSteps);
        long decaySteps = Math.Min(totalSteps, (long)o.DecayEpochs * stepsPerEpoch);
        double decay = decaySteps == 0 ? 1.0 : Math.Clamp((double)(totalSteps - step) / decaySteps, 0.0, 1.0);
        return o.LearningRate * Math.Min(warm, decay);
    }

    /// <summary>Runs the whole training (or the rest of it, with <see cref="TrainingOptions.Resume"/>). Synchronous.</summary>
    public TrainingResult Train(IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var o = Options;
        // Before the data work (minutes for --generate): a resume with nothing to resume from must not start over silently.
        TrainingCheckpoint? resumeFrom = null;
        if (o.Resume)
        {
            resumeFrom = FindCheckpoint(o.OutputDir) ?? throw new InvalidOperationException(
                $"nothing to resume: no checkpoint in '{CheckpointDir}' (looked for {Path.Combine(CheckpointDir, "state.json")} and for a " +
                $"'.checkpoint.old-*' folder left by an interrupted save in '{Path.GetFullPath(o.OutputDir)}'); start without resume to train afresh");
            if (resumeFrom.RecoveredFrom is { } aside)
                progress?.Report(TrainingProgress.Note($"recovered the checkpoint from {aside}, set aside by a save that did not finish"));
        }
        Directory.CreateDirectory(o.OutputDir);
        var metricsPath = Path.Combine(o.OutputDir, "metrics.jsonl");

        // ---- data ----
        var (train, heldOut) = LoadData(progress, cancellationToken);
        var cache = FeatureCache.Open(o.FeatureCacheDir ?? Path.Combine(o.OutputDir, "features"), Target, Tokenizer, train,
            o.BatchSize, o.ShardSize, settings: "fp16-v1", cancellationToken);
        int nb = cache.BatchesPerEpoch(o.BatchSize);
        if (nb == 0) throw new InvalidOperationException($"{cache.Count} sequences give no full batch of {o.BatchSize}; lower --batch or add data");
        long totalSteps = (long)nb * o.Epochs;
        int[]? draftVocab = o.DraftVocab is { } dvN ? MostFrequentTokens(train, dvN, Target.Config.VocabSize) : null;
        KeptIds = draftVocab is null ? null : tensor(draftVocab.Select(i => (long)i).ToArray(), device: Target.Device);

        // ---- model and optimiser ----
        var config = DraftConfig.ForTarget(Target.Config, o.Architecture, draftVocab);
        DraftModelBase created;
        // The initialisation draws from torch's global generator: two runs in one process (a hosted job beside an ML.NET
        // fit) seeding and drawing at once would each get the other's numbers.
        lock (GlobalRngLock)
        {
            torch.manual_seed(o.Seed);
            created = DraftCheckpoint.Create(config, Target);
        }
        using var draft = created;
        var parameters = draft.parameters().Where(p => p.requires_grad).ToList();
        using var optimizer = new AdamW(parameters, lr: o.LearningRate, beta1: o.Beta1, beta2: o.Beta2, weightDecay: o.WeightDecay);

        long step = 0;
        var epochs = new List<EpochMetrics>();
        JsonNode? epochSoFar = null;
        // A stop during an epoch's evaluation leaves the epoch "ending": its figures and evaluation are done on resume,
        // so that a resumed run records what the uninterrupted one records.
        bool epochEndPending = false;
        if (resumeFrom is not null)
        {
            var state = JsonNode.Parse(File.ReadAllText(Path.Combine(CheckpointDir, "state.json")))!.AsObject();
            if ((string?)state["arch"] != o.Architecture) throw new InvalidOperationException($"checkpoint is for '{state["arch"]}', not '{o.Architecture}'");
            if ((string?)state["feature_cache"] != cache.Key.Id) throw new InvalidOperationException("the checkpoint was trained on different data or a different target (feature cache key differs); cannot resume");
            draft.load_safetensors(Path.Combine(CheckpointDir, DraftCheckpoint.WeightsFile), strict: true);
            draft.InvalidateSessionWeights();
            optimizer.load_state_dict(Path.Combine(CheckpointDir, "optimizer.bin"));
            step = (long)state["step"]!;
            epochs = state["epochs"].Deserialize<List<EpochMetrics>>(MetricsJson) ?? [];
            epochSoFar = state["epoch_so_far"];
            epochEndPending = (bool?)state["epoch_end_pending"] ?? false;
            progress?.Report(TrainingProgress.Note($"resuming from step {step} of {totalSteps} (checkpoint in {CheckpointDir})") with { CheckpointStep = step });
        }
        else if (File.Exists(metricsPath)) File.Delete(metricsPath);

        var sw = Stopwatch.StartNew();
        long stepsThisRun = 0, savedAt = step;
        long? checkpointStep = resumeFrom is null ? null : step;
        var window = new Accum(Depths); var epochAcc = Accum.FromJson(epochSoFar, Depths);
        void Checkpoint(int epoch)
        {
            SaveCheckpoint(draft, optimizer, step, epoch, cache, epochs, step % nb == 0 && !epochEndPending ? new Accum(Depths) : epochAcc, epochEndPending);
            savedAt = step; checkpointStep = step;
            progress?.Report(TrainingProgress.Note($"checkpoint saved at step {step}") with { Step = step, TotalSteps = totalSteps, CheckpointStep = step });
        }
        double lastLoss = double.NaN;
        int tokensPerStep = o.BatchSize * o.SeqLen;

        bool Stop() => cancellationToken.IsCancellationRequested || (o.StopAfterSteps is { } s && step >= s);

        void EndEpoch(int epoch, int stage)
        {
            var em = EndOfEpoch(draft, epoch, stage, step, totalSteps, epochAcc, heldOut, progress, cancellationToken);
            epochEndPending = em.EvalError == EvalCancelled && cancellationToken.IsCancellationRequested;
            if (epochEndPending) return;
            epochs.Add(em);
            AppendMetrics(metricsPath, JsonSerializer.SerializeToNode(em, MetricsJson)!.AsObject().Also(j => j["type"] = "epoch"));
            if (o.Plots) TrainingPlots.TryWrite(Path.Combine(o.OutputDir, "plots"), epochs, progress);
        }
        if (epochEndPending)
        {
            int ended = (int)(step / nb) - 1;
            EndEpoch(ended, StageOf(ended));
        }

        while (step < totalSteps)
        {
            int epoch = (int)(step / nb), stage = StageOf(epoch);
            int startBatch = (int)(step % nb);
            if (startBatch == 0) epochAcc = new Accum(Depths);
            if (Stop()) break;
            foreach (var (b, tokens, states) in cache.Batches(o.BatchSize, o.Seed, epoch, startBatch))
            {
                using (var scope = NewDisposeScope())
                {
                    tokens.MoveToOuterDisposeScope(); states.MoveToOuterDisposeScope();   // owned by this scope now
                    optimizer.zero_grad();
                    StepStats st;
                    try { st = Step(draft, tokens, states, stage, step, cancellationToken); }
                    catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
                    {
                        // Stopped between the parts of a step: drop it (its gradients never reach the optimiser), so the
                        // checkpoint below is the state after the last whole step and a resumed run repeats this one exactly.
                        optimizer.zero_grad();
                        break;
                    }
                    torch.nn.utils.clip_grad_norm_(parameters, o.MaxGradNorm);
                    double lr = LearningRateAt(o, step, totalSteps, nb);   // set only now: a dropped step leaves the optimiser as it was
                    foreach (var g in optimizer.ParamGroups) g.LearningRate = lr;
                    optimizer.step();
                    draft.InvalidateSessionWeights();   // evaluation sessions must see the new weights
                    step++; stepsThisRun++;
                    lastLoss = st.Loss;
                    window.Add(st); epochAcc.Add(st);

                    if (step % o.LogEverySteps == 0 || step == totalSteps)
                    {
                        double tps = stepsThisRun * tokensPerStep / Math.Max(1e-9, sw.Elapsed.TotalSeconds);
                        var eta = TimeSpan.FromSeconds((totalSteps - step) * tokensPerStep / Math.Max(1e-9, tps));
                        var p = new TrainingProgress(epoch + 1, o.Epochs, stage, step, totalSteps, window.Loss, window.Ce, window.VLoss,
                            window.Acceptance, lr, tps, eta) { CheckpointStep = checkpointStep };
                        progress?.Report(p);
                        AppendMetrics(metricsPath, new JsonObject
                        {
                            ["type"] = "step", ["step"] = step, ["epoch"] = epoch + 1, ["stage"] = stage, ["loss"] = Num(p.Loss), ["ce"] = Num(p.CrossEntropy),
                            ["vloss"] = Num(p.RegressionLoss), ["acc_by_depth"] = new JsonArray(p.AcceptanceByDepth.Select(Num).ToArray()),
                            ["lr"] = lr, ["tokens_per_second"] = tps,
                        });
                        window = new Accum(Depths);
                    }
                }

                bool epochEnd = b == nb - 1;
                if (epochEnd) EndEpoch(epoch, stage);
                if (epochEnd || step % o.CheckpointEverySteps == 0 || Stop()) Checkpoint(epoch);
                if (Stop()) break;
            }
            if (Stop()) break;
        }

        bool completed = step >= totalSteps && !epochEndPending;
        string? draftDir = null;
        if (completed)
        {
            draftDir = Path.Combine(o.OutputDir, "draft");
            var training = new JsonObject
            {
                ["options"] = o.ToJson(),
                ["steps"] = step,
                ["feature_cache"] = cache.Key.Id,
                ["data_hash"] = cache.Key.DataHash,
                ["final_loss"] = Num(lastLoss),
                ["epochs"] = JsonSerializer.SerializeToNode(epochs, MetricsJson),
            };
            DraftCheckpoint.Save(draft, draftDir, training);
        }
        else if (savedAt != step || !Directory.Exists(CheckpointDir))
            Checkpoint((int)Math.Min(step / nb, o.Epochs - 1));
        progress?.Report(new TrainingProgress((int)Math.Min(step / nb + (completed ? 0 : 1), o.Epochs), o.Epochs, StageOf((int)Math.Min(step / nb, o.Epochs - 1)),
            step, totalSteps, lastLoss, double.NaN, double.NaN, [], 0, 0, TimeSpan.Zero,
            completed ? $"done: draft saved to {draftDir}" : $"stopped at step {step}; checkpoint in {CheckpointDir}") { CheckpointStep = checkpointStep });
        KeptIds?.Dispose(); KeptIds = null;
        return new TrainingResult(o.OutputDir, draftDir, step, completed, lastLoss, epochs, cache.Reused) { CheckpointStep = checkpointStep };
    }

    static readonly JsonSerializerOptions MetricsJson = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>A JSON number, or null for NaN/infinity (a depth with no sample yet).</summary>
    static JsonNode? Num(double d) => double.IsFinite(d) ? JsonValue.Create(d) : null;

    /// <summary>
    /// The --generate sequences: sampled from BOS, or continuing the first --generate-prompt-tokens tokens of the data
    /// documents. Generating is the slow part of data preparation (minutes), so the result is kept next to the feature
    /// cache under a key of everything it depends on (target, tokenizer, prompts, settings) and reused by later runs and
    /// --resume.
    /// </summary>
    List<int[]> GeneratedSequences(List<int[]> dataDocs, IProgress<TrainingProgress>? progress, CancellationToken ct)
    {
        var o = Options;
        List<int[]>? prompts = null;
        if (o.GeneratePromptTokens > 0)
        {
            prompts = TextSources.Prefixes(dataDocs, o.GeneratePromptTokens, o.GeneratePromptStride);
            if (prompts.Count == 0)
                throw new InvalidOperationException($"--generate-prompt-tokens {o.GeneratePromptTokens}: no --data document is longer than that; lower it or add data");
        }
        var key = new StringBuilder()
            .Append(FeatureCache.Fingerprint(Target)).Append('|').Append(FeatureCache.TokenizerHash(Tokenizer)).Append('|')
            .Append(FormattableString.Invariant($"{o.Generate}|{o.GenerateMaxTokens}|{o.GenerateTemperature}|{o.Seed}|{o.GeneratePromptTokens}|{o.GeneratePromptStride}|"))
            .Append(prompts is null ? "bos" : FeatureCache.DataHash(prompts)).ToString();
        var dir = o.FeatureCacheDir ?? Path.Combine(o.OutputDir, "features");
        var path = Path.Combine(dir, $"generated-{Hashing.Hex(Encoding.UTF8.GetBytes(key))[..16]}.bin");
        if (GeneratedFile.TryRead(path) is { } cached)
        {
            progress?.Report(TrainingProgress.Note($"reusing {cached.Count} generated sequences from {path}"));
            return cached;
        }
        int total = TextSources.GeneratedCount(o.Generate, prompts, o.GenerateTemperature);
        progress?.Report(TrainingProgress.Note(prompts is null
            ? $"generating {total} sequences of up to {o.GenerateMaxTokens} tokens from the target (temperature {o.GenerateTemperature})"
            : $"generating {total} continuations of data prompts ({prompts.Count} distinct; {o.GeneratePromptTokens} tokens{(o.GeneratePromptStride > 0 ? $" + every {o.GeneratePromptStride}" : "")}), up to {o.GenerateMaxTokens} tokens each, temperature {o.GenerateTemperature}"));
        var sw = Stopwatch.StartNew();
        var every = Math.Max(1, total / 20);
        var seqs = TextSources.Generate(Target, Tokenizer, o.Generate, o.GenerateMaxTokens, o.GenerateTemperature, o.Seed, prompts, i =>
        {
            if (i % every == 0 || i == total)
                progress?.Report(TrainingProgress.Note($"generated {i}/{total} sequences ({sw.Elapsed.TotalSeconds:F0} s)"));
        }, ct);
        Directory.CreateDirectory(dir);
        GeneratedFile.Write(path, seqs);
        return seqs;
    }

    (List<int[]> Train, List<int[]> HeldOut) LoadData(IProgress<TrainingProgress>? progress, CancellationToken ct)
    {
        var o = Options;
        var docs = new List<int[]>();
        foreach (var path in o.DataPaths) docs.AddRange(SequencePacker.Tokenize(TextSources.ReadDocuments(path), Tokenizer));
        if (o.Generate > 0) docs.AddRange(GeneratedSequences(docs, progress, ct));
        var heldOut = new List<int[]>();
        if (o.EvalPaths.Count > 0)
        {
            // Held-out prompts from the --eval files: their first EvalPrompts documents long enough to give a prompt.
            foreach (var path in o.EvalPaths)
                foreach (var d in SequencePacker.Tokenize(TextSources.ReadDocuments(path), Tokenizer))
                    if (heldOut.Count < o.EvalPrompts && d.Length > o.EvalPromptTokens) heldOut.Add(d[..o.EvalPromptTokens]);
        }
        else
        {
            // Held-out prompts: the last EvalPrompts documents (long enough to give a prompt), removed from the training data.
            for (int i = docs.Count - 1; i >= 0 && heldOut.Count < o.EvalPrompts && docs.Count > 1; i--)
                if (docs[i].Length > o.EvalPromptTokens) { heldOut.Add(docs[i][..o.EvalPromptTokens]); docs.RemoveAt(i); }
        }
        var seqs = SequencePacker.Pack(docs, o.SeqLen, o.MaxSequences > 0 ? o.MaxSequences : null);
        return (seqs, heldOut);
    }

    /// <summary>The N most frequent token ids of the data (ties by lower id), sorted ascending.</summary>
    public static int[] MostFrequentTokens(IEnumerable<int[]> sequences, int n, int vocab)
    {
        if (n > vocab) throw new ArgumentOutOfRangeException(nameof(n), n, $"draft vocabulary larger than the target's ({vocab})");
        var counts = new long[vocab];
        foreach (var s in sequences) foreach (var t in s) counts[t]++;
        return Enumerable.Range(0, vocab).OrderByDescending(i => counts[i]).ThenBy(i => i).Take(n).Order().ToArray();
    }

    const string EvalCancelled = "cancelled";

    EpochMetrics EndOfEpoch(DraftModelBase draft, int epoch, int stage, long step, long totalSteps, Accum acc, List<int[]> heldOut,
        IProgress<TrainingProgress>? progress, CancellationToken ct)
    {
        double? tau = null; double[]? byDepth = null; string? error = null;
        if (heldOut.Count > 0 && Options.EvalPrompts > 0)
        {
            try { (tau, byDepth) = Evaluate(draft, heldOut, ct); }
            catch (OperationCanceledException) { error = EvalCancelled; }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // Evaluation must never end a training run: the speculative decoder may not be available yet (it
                // throws NotSupportedException until it lands) or may fail on this draft; the reason is recorded in
                // metrics.jsonl and the progress message instead.
                error = $"{e.GetType().Name}: {e.Message}";
            }
        }
        var m = new EpochMetrics(epoch + 1, stage, step, acc.Loss, acc.Acceptance, tau, byDepth, error);
        progress?.Report(new TrainingProgress(epoch + 1, Options.Epochs, stage, step, totalSteps, acc.Loss, acc.Ce, acc.VLoss,
            acc.Acceptance, 0, 0, TimeSpan.Zero,
            tau is { } t ? $"epoch {epoch + 1}: eval acceptance length {t:F3} (by depth {string.Join(" ", byDepth!.Select(a => a.ToString("F2")))})"
            : error is null ? $"epoch {epoch + 1}: done (no evaluation)" : $"epoch {epoch + 1}: evaluation unavailable ({error})"));
        return m;
    }

    /// <summary>
    /// Acceptance length and acceptance rate by depth with the real tree decoder (greedy) on held-out prompts,
    /// pooled over prompts (sum of round tokens over sum of target forwards).
    /// </summary>
    public (double AcceptanceLength, double[] ByDepth) Evaluate(IDraftModel draft, IReadOnlyList<int[]> prompts, CancellationToken ct = default)
    {
        var gen = new Decoding.Generator(Target, Tokenizer, draft);
        var options = new GenerationOptions
        {
            MaxNewTokens = Options.EvalMaxNewTokens,
            Speculative = new SpeculativeOptions { TreeTokens = Options.EvalTreeTokens, TreeDepth = Options.EvalTreeDepth, TreeTopK = Options.EvalTreeTopK },
        };
        long roundTokens = 0, forwards = 0, rounds = 0; var accepted = new List<long>();
        using var _ = no_grad();
        foreach (var p in prompts)
        {
            var stats = new GenerationStats();
            foreach (var __ in gen.Generate(p, options, stats, ct)) { }
            roundTokens += stats.RoundTokens; forwards += stats.TargetForwards; rounds += stats.DraftRounds;
            for (int d = 0; d < stats.AcceptedAtDepth.Length; d++)
            {
                while (accepted.Count <= d) accepted.Add(0);
                accepted[d] += stats.AcceptedAtDepth[d];
            }
        }
        return (forwards == 0 ? 0 : (double)roundTokens / forwards, accepted.Select(a => rounds == 0 ? 0 : (double)a / rounds).ToArray());
    }

    void SaveCheckpoint(DraftModelBase draft, OptimizerHelper optimizer, long step, int epoch, FeatureCache cache, List<EpochMetrics> epochs, Accum epochSoFar, bool epochEndPending)
    {
        var state = new JsonObject
        {
            ["arch"] = Options.Architecture,
            ["step"] = step,
            ["epoch"] = epoch,
            ["data_position"] = new JsonObject { ["epoch"] = (int)(step / cache.BatchesPerEpoch(Options.BatchSize)), ["batch"] = (int)(step % cache.BatchesPerEpoch(Options.BatchSize)) },
            // No RNG tensors to store: every step's randomness is seeded by (seed, step) (see the class summary).
            ["rng"] = new JsonObject { ["seed"] = Options.Seed, ["scheme"] = "per-step: Seeds.Mix(seed, step, salt)" },
            ["schedule"] = new JsonObject { ["lr"] = Options.LearningRate, ["warmup_steps"] = Options.WarmupSteps, ["decay_epochs"] = Options.DecayEpochs,
                ["kind"] = Options.DecayEpochs == 0 ? "linear warm-up, then constant" : "linear warm-up, constant, linear decay to 0 over the last decay_epochs" },
            ["feature_cache"] = cache.Key.Id,
            ["options"] = Options.ToJson(),
            ["epochs"] = JsonSerializer.SerializeToNode(epochs, MetricsJson),
            ["epoch_so_far"] = epochSoFar.ToJson(),
            ["epoch_end_pending"] = epochEndPending,
        };
        AtomicFile.ReplaceDirectory(CheckpointDir, dir =>
        {
            draft.save_safetensors(Path.Combine(dir, DraftCheckpoint.WeightsFile));
            optimizer.save_state_dict(Path.Combine(dir, "optimizer.bin"));
            File.WriteAllText(Path.Combine(dir, "state.json"), state.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        });
    }

    static void AppendMetrics(string path, JsonObject line) => File.AppendAllText(path, line.ToJsonString() + "\n");

    /// <summary>Running averages of step statistics.</summary>
    sealed class Accum(int depths)
    {
        int _n; double _loss, _ce, _vl;
        readonly double[] _agree = new double[depths], _count = new double[depths];
        public void Add(StepStats s)
        {
            _n++; _loss += s.Loss; _ce += s.CrossEntropy; _vl += s.RegressionLoss;
            for (int d = 0; d < Math.Min(depths, s.AgreementByDepth.Length); d++) { _agree[d] += s.AgreementByDepth[d]; _count[d] += s.CountByDepth[d]; }
        }
        public double Loss => _n == 0 ? double.NaN : _loss / _n;
        public double Ce => _n == 0 ? double.NaN : _ce / _n;
        public double VLoss => _n == 0 ? double.NaN : _vl / _n;
        public double[] Acceptance => _agree.Zip(_count, (a, c) => c == 0 ? double.NaN : a / c).ToArray();

        /// <summary>The running sums, so that a run resumed mid-epoch reports the whole epoch (doubles round-trip exactly in JSON).</summary>
        public JsonObject ToJson() => new()
        {
            ["n"] = _n, ["loss"] = _loss, ["ce"] = _ce, ["vloss"] = _vl,
            ["agree"] = new JsonArray(_agree.Select(a => (JsonNode?)a).ToArray()), ["count"] = new JsonArray(_count.Select(c => (JsonNode?)c).ToArray()),
        };

        public static Accum FromJson(JsonNode? j, int depths)
        {
            var a = new Accum(depths);
            if (j is null) return a;   // a checkpoint written before epoch sums were kept: the epoch's figures cover the resumed part
            a._n = (int)j["n"]!; a._loss = (double)j["loss"]!; a._ce = (double)j["ce"]!; a._vl = (double)j["vloss"]!;
            var agree = j["agree"]!.AsArray(); var count = j["count"]!.AsArray();
            for (int d = 0; d < Math.Min(depths, agree.Count); d++) { a._agree[d] = (double)agree[d]!; a._count[d] = (double)count[d]!; }
            return a;
        }
    }
}

static class JsonExtensions
{
    public static JsonObject Also(this JsonObject o, Action<JsonObject> f) { f(o); return o; }
}
