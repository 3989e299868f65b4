using System.Collections.Concurrent;
using System.Text.Json;
using System.Text.Json.Nodes;
using Beagle.Checkpoints;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Runtime;
using Beagle.Training;

namespace Beagle.MLNet.Internal;

// The ML.NET face's calls into the core, in one place: target loading, target identity, draft checkpoints and the
// draft trainer. Everything else in Beagle.MLNet goes through these.

/// <summary>The composition root's spec for the target (a known name, a llama2.c file or a Hugging Face folder); drafts come from the saved files.</summary>
internal static class TargetSource
{
    public static ModelSpec Spec(string targetPath, string? tokenizerPath, string device) =>
        new() { Target = targetPath, Tokenizer = tokenizerPath, Device = device, NoDraft = true };

    /// <summary>Loads the target and its tokenizer. Runs on the engine thread.</summary>
    public static LoadedTarget Load(string targetPath, string? tokenizerPath, string device) => ModelLoader.LoadTarget(Spec(targetPath, tokenizerPath, device));
}

/// <summary>
/// The target's identity as stored in a saved model: <see cref="TargetFingerprint"/> (vocabulary, width and the
/// SHA-256 of the embedding, the same identity a draft checkpoint records). Must run on the engine thread.
/// </summary>
internal static class TargetIdentity
{
    public static string Fingerprint(LlamaModel target)
    {
        var f = TargetFingerprint.Of(target);
        return $"vocab={f.VocabSize};hidden={f.HiddenSize};embedding-sha256={f.EmbeddingSha256}";
    }
}

/// <summary>Draft checkpoints (<see cref="DraftCheckpoint"/>): a folder, or its files held in a saved model.</summary>
internal static class DraftStore
{
    /// <summary>Loads a draft folder for <paramref name="target"/>; a draft trained for another target is refused. Runs on the engine thread.</summary>
    public static IDraftModel Load(string dir, LlamaModel target) => ModelLoader.LoadDraft(dir, target);

    /// <summary>
    /// Loads a draft from its checkpoint files held in memory (a saved model's zip entries), read in place with no
    /// temporary copy; <paramref name="source"/> names them in errors. Runs on the engine thread.
    /// </summary>
    public static IDraftModel Load(IReadOnlyDictionary<string, byte[]> files, LlamaModel target, string source)
    {
        byte[] File(string name) => files.TryGetValue(name, out var bytes) ? bytes : throw new InvalidDataException($"{name} is missing in {source}");
        using var meta = new MemoryStream(File(DraftCheckpoint.MetaFile), writable: false);
        using var weights = new MemoryStream(File(DraftCheckpoint.WeightsFile), writable: false);
        return DraftCheckpoint.Load(meta, weights, target, source);
    }

    /// <summary>The draft's architecture recorded in its draft.json, if readable (for the model description).</summary>
    public static string? Architecture(IReadOnlyDictionary<string, byte[]> files)
    {
        if (!files.TryGetValue(DraftCheckpoint.MetaFile, out var bytes)) return null;
        try { return JsonNode.Parse(bytes)?["config"]?["architecture"]?.GetValue<string>(); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException) { return null; }
    }
}

/// <summary>
/// The core trainer, run on the transformer's engine thread with the target it loaded (<see cref="Train"/> is the
/// runtime's draft source), its progress relayed to the fitting thread (<see cref="Relay"/>).
/// </summary>
internal sealed class DraftTrainerAdapter(TrainingOptions options, CancellationToken cancellationToken)
{
    readonly BlockingCollection<string> _lines = new();

    /// <summary>The finished run (set by <see cref="Train"/>).</summary>
    public TrainingResult? Result { get; private set; }

    /// <summary>
    /// Trains a draft for <paramref name="target"/> (see <see cref="DraftTrainer"/>) and returns its files. Cancellation:
    /// the trainer stops at the next step and saves a checkpoint; this then throws OperationCanceledException.
    /// </summary>
    public DraftFiles Train(LoadedTarget target)
    {
        options.Validate();
        var result = DraftTrainer.Create(target.Model, target.Tokenizer, options).Train(new SyncProgress(p => _lines.Add(Describe(p))), cancellationToken);
        if (!result.Completed)
        {
            cancellationToken.ThrowIfCancellationRequested();
            throw new InvalidOperationException($"draft training stopped at step {result.Steps} of its run without finishing; its checkpoint is in {result.OutputDir}");
        }
        Result = result;
        return new DraftFiles(BeagleRuntime.ReadFiles(result.DraftDir!), result.DraftDir!);
    }

    /// <summary>
    /// Hands progress lines to <paramref name="report"/> on the calling thread (ML.NET channels are used from the thread
    /// that opened them) until <paramref name="ready"/> completes: every line is added before the engine is ready.
    /// </summary>
    public void Relay(Task ready, Action<string> report)
    {
        ready.ContinueWith(_ => _lines.CompleteAdding(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        foreach (var line in _lines.GetConsumingEnumerable()) report(line);
    }

    /// <summary>One log line per progress report.</summary>
    public static string Describe(TrainingProgress p) => p.Message is { } m
        ? $"epoch {p.Epoch}/{p.Epochs} stage {p.Stage} step {p.Step}/{p.TotalSteps}: {m}"
        : string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"epoch {p.Epoch}/{p.Epochs} stage {p.Stage} step {p.Step}/{p.TotalSteps}: loss {p.Loss:F4} (ce {p.CrossEntropy:F4}) " +
            $"top-1 agreement by depth [{string.Join(", ", p.AcceptanceByDepth.Select(Rate))}], " +
            $"lr {p.LearningRate:G3}, {p.TokensPerSecond:F0} tok/s, eta {p.Eta:hh\\:mm\\:ss}");

    /// <summary>A rate with two decimals, or "n/a" for a depth no step reached (stage 2 simulates fewer steps than the window).</summary>
    static string Rate(double a) => double.IsFinite(a) ? a.ToString("F2", System.Globalization.CultureInfo.InvariantCulture) : "n/a";

    /// <summary>IProgress that calls back synchronously (Progress&lt;T&gt; would post to the thread pool and reorder reports).</summary>
    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress> { public void Report(TrainingProgress value) => report(value); }
}
