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
/// The weights hash makes any corruption (truncation included) a clear <see cref="InvalidDataException"/>. The two files
/// load from a folder or from streams (a checkpoint stored inside another file); either way the architecture named in
/// the config creates the module (<see cref="DraftArchitectures"/>) and its parameters are read from the weights.
/// </summary>
public static class DraftCheckpoint
{
    public const string WeightsFile = "draft.safetensors";
    public const string MetaFile = "draft.json";
    const string Format = "beagle-draft";
    const int Version = 1;

    /// <summary>Creates a freshly initialised draft of the configured architecture for <paramref name="target"/>.</summary>
    public static DraftModelBase Create(DraftConfig config, LlamaModel target) =>
        DraftArchitectures.Get(config.Validate().Architecture).Create(config, target);

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
    /// Loads a draft folder for <paramref name="target"/>. Refuses a draft trained for another target (message names both
    /// fingerprints) and a missing or corrupt file (<see cref="InvalidDataException"/>).
    /// </summary>
    public static DraftModelBase Load(string dir, LlamaModel target)
    {
        var meta = ReadMeta(dir);
        string wPath = Path.Combine(dir, WeightsFile);
        CheckMeta(meta, dir, target);   // before the weights file: another target's draft is named as such even without it
        if (!File.Exists(wPath)) throw new InvalidDataException($"{WeightsFile} is missing in {dir}");
        using var weights = File.OpenRead(wPath);
        return LoadChecked(meta, weights, dir, target);
    }

    /// <summary>
    /// Loads a draft from its two files' contents (a checkpoint stored inside another file, such as an ML.NET model zip),
    /// with the checks of <see cref="Load(string, LlamaModel)"/>. <paramref name="source"/> names where the files come from
    /// in error messages. The streams are read, not kept or disposed; a weights stream that cannot seek is buffered once
    /// (it is read twice: hashed, then loaded).
    /// </summary>
    public static DraftModelBase Load(Stream meta, Stream weights, LlamaModel target, string source)
    {
        JsonObject m;
        try { m = JsonNode.Parse(meta) as JsonObject ?? throw new InvalidDataException($"{MetaFile} in {source} is not a JSON object"); }
        catch (JsonException e) { throw new InvalidDataException($"{MetaFile} in {source} is not valid JSON: {e.Message}", e); }
        CheckMeta(m, source, target);
        if (!weights.CanSeek)
        {
            var buffered = new MemoryStream();
            weights.CopyTo(buffered);
            buffered.Position = 0;
            using (buffered) return LoadChecked(m, buffered, source, target);
        }
        return LoadChecked(m, weights, source, target);
    }

    /// <summary>Format, version and target fingerprint of a checkpoint's metadata; <paramref name="where"/> names it in messages.</summary>
    static void CheckMeta(JsonObject meta, string where, LlamaModel target)
    {
        if (meta["format"]?.GetValue<string>() != Format) throw new InvalidDataException($"{MetaFile} in {where} is not a {Format} file");
        if (meta["version"]?.GetValue<int>() != Version) throw new InvalidDataException($"{MetaFile} in {where}: unsupported version {meta["version"]}");
        var saved = TargetFingerprint.FromJson(meta["target"]);
        var actual = TargetFingerprint.Of(target);
        if (saved != actual)
            throw new InvalidDataException($"draft in {where} was trained for {saved}, target has {actual}");
    }

    /// <summary>The config, the weights' hash, then the draft: created by its architecture and filled from <paramref name="weights"/> (seekable).</summary>
    static DraftModelBase LoadChecked(JsonObject meta, Stream weights, string where, LlamaModel target)
    {
        DraftConfig config;
        try { config = DraftConfig.FromJson(meta["config"]?.ToJsonString() ?? throw new InvalidDataException($"{MetaFile}: 'config' missing")); }
        catch (JsonException e) { throw new InvalidDataException($"{MetaFile} in {where}: bad config: {e.Message}", e); }

        string expected = meta["weights_sha256"]?.GetValue<string>() ?? throw new InvalidDataException($"{MetaFile}: 'weights_sha256' missing");
        long start = weights.Position;
        string hash = Convert.ToHexStringLower(SHA256.HashData(weights));
        if (hash != expected)
            throw new InvalidDataException($"{WeightsFile} in {where} is corrupt or truncated (sha256 {hash[..12]}…, expected {expected[..Math.Min(12, expected.Length)]}…)");
        weights.Position = start;

        var draft = Create(config, target);
        try { draft.load_safetensors(weights, strict: true, leaveOpen: true); }
        catch (Exception e) when (e is not InvalidDataException)
        {
            draft.Dispose();
            throw new InvalidDataException($"{WeightsFile} in {where} does not fit a {config.Architecture} draft: {e.Message}", e);
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
