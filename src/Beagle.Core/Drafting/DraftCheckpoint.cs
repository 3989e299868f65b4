using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Beagle.Models;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Beagle.Drafting;

/// <summary>Identifies the target a draft was trained for: vocabulary, width and a hash of the embedding.</summary>
/// <param name="VocabSize">Target vocabulary size.</param>
/// <param name="HiddenSize">Target hidden size d.</param>
/// <param name="EmbeddingSha256">Lower-case hex SHA-256 of the embedding [V, D] as contiguous little-endian fp32 bytes.</param>
public sealed record TargetFingerprint(int VocabSize, int HiddenSize, string EmbeddingSha256)
{
    public static TargetFingerprint Of(LlamaModel target)
    {
        using var scope = NewDisposeScope();
        var e = target.Embedding.detach().to(float32).cpu().contiguous();
        var data = e.data<float>().ToArray();
        var hash = Convert.ToHexStringLower(SHA256.HashData(MemoryMarshal.AsBytes(data.AsSpan())));
        return new TargetFingerprint(target.Config.VocabSize, target.Config.Dim, hash);
    }

    public override string ToString() => $"vocab {VocabSize} / hidden {HiddenSize} / embedding {EmbeddingSha256[..Math.Min(12, EmbeddingSha256.Length)]}…";

    internal JsonObject ToJson() => new()
    {
        ["vocab_size"] = VocabSize,
        ["hidden_size"] = HiddenSize,
        ["embedding_sha256"] = EmbeddingSha256,
    };

    internal static TargetFingerprint FromJson(JsonNode? node)
    {
        if (node is not JsonObject o) throw new InvalidDataException("draft.json: missing 'target' fingerprint");
        return new TargetFingerprint(
            o["vocab_size"]?.GetValue<int>() ?? throw new InvalidDataException("draft.json: target.vocab_size missing"),
            o["hidden_size"]?.GetValue<int>() ?? throw new InvalidDataException("draft.json: target.hidden_size missing"),
            o["embedding_sha256"]?.GetValue<string>() ?? throw new InvalidDataException("draft.json: target.embedding_sha256 missing"));
    }
}

/// <summary>
/// A draft checkpoint folder: <c>draft.safetensors</c> (the draft's own parameters only; the target's embedding and
/// LM head are never saved) and <c>draft.json</c>:
/// <code>
/// { "format": "beagle-draft", "version": 1, "config": {DraftConfig}, "target": {vocab_size, hidden_size, embedding_sha256},
///   "weights_sha256": "…", "training": {free object filled by the trainer} }
/// </code>
/// The weights hash makes any corruption (truncation included) a clear <see cref="InvalidDataException"/>.
/// </summary>
public static class DraftCheckpoint
{
    public const string WeightsFile = "draft.safetensors";
    public const string MetaFile = "draft.json";
    const string Format = "beagle-draft";
    const int Version = 1;

    /// <summary>Creates a freshly initialised draft of the configured architecture for <paramref name="target"/>.</summary>
    public static DraftModelBase Create(DraftConfig config, LlamaModel target) => config.Validate().Architecture switch
    {
        DraftConfig.Beagle => new BeagleDraft(config, target),
        DraftConfig.Eagle2 => new Eagle2Draft(config, target),
        var a => throw new InvalidDataException($"unknown draft architecture '{a}'"),
    };

    /// <summary>Writes the checkpoint into <paramref name="dir"/> (created if needed); each file is written to a temporary name then moved into place.</summary>
    public static void Save(IDraftModel draft, string dir, JsonObject? training = null)
    {
        if (draft is not DraftModelBase m) throw new ArgumentException($"cannot save a draft of type {draft.GetType().Name}", nameof(draft));
        Directory.CreateDirectory(dir);
        string tag = "." + Guid.NewGuid().ToString("N")[..8] + ".tmp";
        string wTmp = Path.Combine(dir, WeightsFile + tag), jTmp = Path.Combine(dir, MetaFile + tag);
        try
        {
            m.save_safetensors(wTmp);
            string weightsHash;
            using (var fs = File.OpenRead(wTmp)) weightsHash = Convert.ToHexStringLower(SHA256.HashData(fs));
            var meta = new JsonObject
            {
                ["format"] = Format,
                ["version"] = Version,
                ["config"] = JsonNode.Parse(m.Config.ToJson()),
                ["target"] = TargetFingerprint.Of(m.Target).ToJson(),
                ["weights_sha256"] = weightsHash,
                ["training"] = training?.DeepClone() ?? new JsonObject(),
            };
            File.WriteAllText(jTmp, meta.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            File.Move(wTmp, Path.Combine(dir, WeightsFile), overwrite: true);
            File.Move(jTmp, Path.Combine(dir, MetaFile), overwrite: true);
        }
        finally
        {
            if (File.Exists(wTmp)) File.Delete(wTmp);
            if (File.Exists(jTmp)) File.Delete(jTmp);
        }
    }

    /// <summary>Reads the training settings object stored in a checkpoint (empty when none).</summary>
    public static JsonObject ReadTraining(string dir) => (ReadMeta(dir)["training"] as JsonObject)?.DeepClone().AsObject() ?? new JsonObject();

    /// <summary>
    /// Loads a draft for <paramref name="target"/>. Refuses a draft trained for another target (message names both
    /// fingerprints) and a missing or corrupt file (<see cref="InvalidDataException"/>).
    /// </summary>
    public static DraftModelBase Load(string dir, LlamaModel target)
    {
        var meta = ReadMeta(dir);
        if (meta["format"]?.GetValue<string>() != Format) throw new InvalidDataException($"{MetaFile} in {dir} is not a {Format} file");
        if (meta["version"]?.GetValue<int>() != Version) throw new InvalidDataException($"{MetaFile} in {dir}: unsupported version {meta["version"]}");
        var saved = TargetFingerprint.FromJson(meta["target"]);
        var actual = TargetFingerprint.Of(target);
        if (saved != actual)
            throw new InvalidDataException($"draft in {dir} was trained for {saved}, target has {actual}");
        DraftConfig config;
        try { config = DraftConfig.FromJson(meta["config"]?.ToJsonString() ?? throw new InvalidDataException($"{MetaFile}: 'config' missing")); }
        catch (JsonException e) { throw new InvalidDataException($"{MetaFile} in {dir}: bad config: {e.Message}", e); }

        string wPath = Path.Combine(dir, WeightsFile);
        if (!File.Exists(wPath)) throw new InvalidDataException($"{WeightsFile} is missing in {dir}");
        string expected = meta["weights_sha256"]?.GetValue<string>() ?? throw new InvalidDataException($"{MetaFile}: 'weights_sha256' missing");
        string hash;
        using (var fs = File.OpenRead(wPath)) hash = Convert.ToHexStringLower(SHA256.HashData(fs));
        if (hash != expected)
            throw new InvalidDataException($"{WeightsFile} in {dir} is corrupt or truncated (sha256 {hash[..12]}…, expected {expected[..Math.Min(12, expected.Length)]}…)");

        var draft = Create(config, target);
        try { draft.load_safetensors(wPath, strict: true); }
        catch (Exception e) when (e is not InvalidDataException)
        {
            draft.Dispose();
            throw new InvalidDataException($"{WeightsFile} in {dir} does not fit a {config.Architecture} draft: {e.Message}", e);
        }
        return draft;
    }

    static JsonObject ReadMeta(string dir)
    {
        string path = Path.Combine(dir, MetaFile);
        if (!File.Exists(path)) throw new InvalidDataException($"{MetaFile} is missing in {dir}");
        try
        {
            return JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{MetaFile} in {dir} is not a JSON object");
        }
        catch (JsonException e) { throw new InvalidDataException($"{MetaFile} in {dir} is not valid JSON: {e.Message}", e); }
    }
}
