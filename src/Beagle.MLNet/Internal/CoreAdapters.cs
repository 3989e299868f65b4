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

/// <summary>Draft checkpoints on disk (<see cref="DraftCheckpoint"/>).</summary>
internal static class DraftStore
{
    /// <summary>Loads a draft folder for <paramref name="target"/>; a draft trained for another target is refused. Runs on the engine thread.</summary>
    public static IDraftModel Load(string dir, LlamaModel target) => ModelLoader.LoadDraft(dir, target);

    /// <summary>The draft's architecture recorded in its draft.json, if readable (for the model description).</summary>
    public static string? Architecture(IReadOnlyDictionary<string, byte[]> files)
    {
        if (!files.TryGetValue(DraftCheckpoint.MetaFile, out var bytes)) return null;
        try { return JsonNode.Parse(bytes)?["config"]?["architecture"]?.GetValue<string>(); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException) { return null; }
    }
}

/// <summary>The core trainer, run on its own thread with its own copy of the target.</summary>
internal static class DraftTrainerAdapter
{
    /// <summary>
    /// Trains a draft (see <see cref="DraftTrainer"/>) and returns when it is done. Progress lines are handed to
    /// <paramref name="report"/> on the calling thread (ML.NET channels are used from the thread that opened them).
    /// Cancellation: the trainer stops at the next step and saves a checkpoint; this then throws OperationCanceledException.
    /// </summary>
    public static TrainingResult Train(TrainingOptions options, string device, Action<string> report, CancellationToken cancellationToken)
    {
        options.Validate();
        var lines = new BlockingCollection<string>();
        var progress = new SyncProgress(p => lines.Add(Describe(p)));
        var training = Task.Factory.StartNew(() =>
        {
            try
            {
                using var target = TargetSource.Load(options.TargetPath!, options.TokenizerPath, device);
                return DraftTrainer.Create(target.Model, target.Tokenizer, options).Train(progress, cancellationToken);
            }
            finally { lines.CompleteAdding(); }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        foreach (var line in lines.GetConsumingEnumerable()) report(line);
        var result = training.GetAwaiter().GetResult();
        if (!result.Completed)
        {
            cancellationToken.ThrowIfCancellationRequested();
            throw new InvalidOperationException($"draft training stopped at step {result.Steps} of its run without finishing; its checkpoint is in {result.OutputDir}");
        }
        return result;
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
