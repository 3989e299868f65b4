using System.Security.Cryptography;
using Beagle.Checkpoints;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Runtime;
using Beagle.Tokenization;
using static TorchSharp.torch;

namespace Beagle.MLNet.Internal;

// Small seams over core APIs that are being built in parallel (TargetLoader, TargetFingerprint, DraftCheckpoint,
// the trainer). Only this file changes when they land; everything else in Beagle.MLNet calls these.

/// <summary>Loads a target and its tokenizer. Runs on the engine thread.</summary>
internal static class TargetSource
{
    public static (LlamaModel Model, ITokenizer Tokenizer) Load(string targetPath, string? tokenizerPath, string device)
    {
        var dev = DeviceSelector.Resolve(device);
        if (Directory.Exists(targetPath))
            throw new NotSupportedException($"'{targetPath}' is a folder: Hugging Face targets need Beagle.Checkpoints.TargetLoader, which this build of Beagle.MLNet does not use yet; pass a llama2.c .bin checkpoint");
        string tokPath = tokenizerPath ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(targetPath))!, "tok512.bin");
        if (!File.Exists(tokPath)) throw new FileNotFoundException($"tokenizer not found at '{tokPath}': set TokenizerPath", tokPath);
        using var w = Llama2cCheckpoint.Load(targetPath);
        var model = new LlamaModel(w, dev);
        try { return (model, Llama2cTokenizer.Load(tokPath, model.Config.VocabSize)); }
        catch { model.Dispose(); throw; }
    }
}

/// <summary>
/// Identifies a target's weights, so a saved pipeline refuses a different target. Interim implementation until
/// Beagle.Drafting.TargetFingerprint lands: SHA-256 over the config and up to 256 evenly spaced rows of the embedding
/// and LM head plus the final norm. Must run on the engine thread (it makes tensors).
/// </summary>
internal static class TargetIdentity
{
    public static string Fingerprint(LlamaModel target)
    {
        using var scope = NewDisposeScope();
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var c = target.Config;
        sha.AppendData(System.Text.Encoding.UTF8.GetBytes(
            $"{c.ModelType}|{c.Dim}|{c.HiddenDim}|{c.Layers}|{c.Heads}|{c.KvHeads}|{c.VocabSize}|{c.MaxSeqLen}|{c.EffectiveHeadDim}|{c.RopeTheta}|{c.NormEps}|{c.TieEmbeddings}"));
        int rows = (int)Math.Min(256, c.VocabSize);
        var idx = tensor(Enumerable.Range(0, rows).Select(i => (long)i * c.VocabSize / rows).ToArray(), device: target.Device);
        foreach (var t in new[] { target.Embedding.index_select(0, idx), target.LmHeadWeight.index_select(0, idx), target.FinalNormWeight })
            sha.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(t.cpu().contiguous().data<float>().ToArray().AsSpan()));
        return "sha256:" + Convert.ToHexStringLower(sha.GetHashAndReset());
    }
}

/// <summary>Draft checkpoints on disk. Interim until Beagle.Drafting.DraftCheckpoint lands.</summary>
internal static class DraftStore
{
    public const string Missing = "this build of Beagle.MLNet cannot load draft checkpoints yet (it waits for Beagle.Drafting.DraftCheckpoint); use no draft (plain decoding)";

    /// <summary>Loads a draft folder for <paramref name="target"/>. Runs on the engine thread.</summary>
    public static IDraftModel Load(string dir, LlamaModel target) =>
        TestLoader?.Invoke(dir, target) ?? throw new NotSupportedException(Missing + $" (draft folder '{dir}', target dim {target.Config.Dim})");

    /// <summary>Tests only: stands in for the draft loader so the embedding of draft files can be tested end to end.</summary>
    internal static Func<string, LlamaModel, IDraftModel>? TestLoader { get; set; }

    /// <summary>The draft's architecture recorded in its folder, if known (for the model description).</summary>
    public static string? Architecture(IReadOnlyDictionary<string, byte[]> files) => null;
}

/// <summary>What the ML.NET trainer estimator asks the core trainer for.</summary>
internal sealed record DraftTrainingRequest(
    string TargetPath, string? TokenizerPath, string Device, IReadOnlyList<string> Texts, string Architecture,
    int Epochs, int Stage1Epochs, int Window, int SimSteps, int BatchSize, int SeqLen, double LearningRate, int? MaxSteps,
    int Seed, string OutputDir);

/// <summary>The core trainer. Interim until Beagle.Training lands: refuses with a clear message.</summary>
internal static class DraftTrainer
{
    public static bool Available => false;

    /// <summary>Trains and writes a draft checkpoint to <c>request.OutputDir</c>; reports progress lines.</summary>
    public static Task TrainAsync(DraftTrainingRequest request, IProgress<string> progress, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        throw new NotSupportedException("TrainDraft needs the core draft trainer (Beagle.Training), which this build of Beagle.MLNet does not have yet; use mlContext.Beagle().Generate(...) with an existing draft or none");
    }
}
