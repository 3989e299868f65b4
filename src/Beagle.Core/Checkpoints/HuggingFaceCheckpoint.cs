using System.Text.Json;
using Beagle.Models;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Beagle.Checkpoints;

/// <summary>
/// Reads a Hugging Face Llama-family folder (model_type llama, qwen2 or mistral): config.json (+ generation_config.json)
/// and safetensors weights, single-file (model.safetensors) or sharded (model.safetensors.index.json), in f32, f16 or
/// bf16 (converted to fp32). HF stores q/k projection rows already permuted for the half-split rotary layout, so the
/// weights are used as they are with <see cref="RopeLayout.HalfSplit"/>.
/// Every config field that changes the math is bound or refused; every tensor name and shape is checked.
/// </summary>
public static class HuggingFaceCheckpoint
{
    public const string ConfigFile = "config.json";
    public const string GenerationConfigFile = "generation_config.json";
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    /// <summary>True when <paramref name="path"/> is a folder with a config.json.</summary>
    public static bool IsHuggingFaceFolder(string path) => Directory.Exists(path) && File.Exists(Path.Combine(path, ConfigFile));

    public static LlamaWeights Load(string folder)
    {
        var cfg = ReadConfig(folder);
        var files = WeightFiles(folder);
        var expected = ExpectedShapes(cfg);

        // Check every header first, so a bad name, dtype or shape is reported before any data is read.
        var where = new Dictionary<string, string>(StringComparer.Ordinal);
        var unexpected = new List<string>();
        foreach (var file in files.Distinct())
        {
            foreach (var (name, e) in SafetensorsFile.ReadHeader(file))
            {
                if (!expected.TryGetValue(name, out var shape))
                {
                    // Old checkpoints carry the rotary inverse-frequency buffer; it is recomputed from the config.
                    // A tied model may still store lm_head.weight (a copy of the embedding); it is not used.
                    if (name.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) || (cfg.TieEmbeddings && name == "lm_head.weight")) continue;
                    unexpected.Add(name); continue;
                }
                if (e.DType is not ("F32" or "F16" or "BF16"))
                    throw new InvalidDataException($"{file}: tensor '{name}' has dtype {e.DType}; only F32, F16 and BF16 are supported");
                if (!e.Shape.SequenceEqual(shape))
                    throw new InvalidDataException($"{file}: tensor '{name}' has shape [{string.Join(", ", e.Shape)}] but config.json implies [{string.Join(", ", shape)}]");
                if (!where.TryAdd(name, file)) throw new InvalidDataException($"{folder}: tensor '{name}' appears in two files ({where[name]} and {file})");
            }
        }
        var missing = expected.Keys.Where(k => !where.ContainsKey(k)).ToList();
        if (missing.Count > 0 || unexpected.Count > 0)
            throw new InvalidDataException($"{folder}: the weights do not match a {cfg.ModelType} model with this config." +
                (missing.Count > 0 ? $" Missing ({missing.Count}): {Preview(missing)}." : "") +
                (unexpected.Count > 0 ? $" Unexpected ({unexpected.Count}): {Preview(unexpected)}." : ""));

        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var group in where.GroupBy(kv => kv.Value))
            {
                Dictionary<string, Tensor> loaded;
                try { loaded = Safetensors.LoadStateDict(group.Key, group.Select(kv => kv.Key).ToList()); }
                catch (Exception e) when (e is IOException or NotImplementedException or ArgumentException or EndOfStreamException)
                { throw new InvalidDataException($"{group.Key}: could not read tensors ({e.Message})", e); }
                foreach (var (name, t) in loaded)
                {
                    var f = t.dtype == ScalarType.Float32 ? t : t.to(float32);
                    if (!ReferenceEquals(f, t)) t.Dispose();
                    if (!f.isfinite().all().item<bool>()) { f.Dispose(); throw new InvalidDataException($"{group.Key}: tensor '{name}' has non-finite values; the checkpoint is corrupt"); }
                    tensors[name] = f;
                }
            }
            return Assemble(cfg, tensors);
        }
        catch
        {
            foreach (var t in tensors.Values) t.Dispose();
            throw;
        }
    }

    static LlamaWeights Assemble(ModelConfig cfg, Dictionary<string, Tensor> t)
    {
        var layers = new LayerWeights[cfg.Layers];
        for (int i = 0; i < cfg.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            layers[i] = new LayerWeights
            {
                AttnNorm = t[p + "input_layernorm.weight"],
                Wq = t[p + "self_attn.q_proj.weight"], Wk = t[p + "self_attn.k_proj.weight"],
                Wv = t[p + "self_attn.v_proj.weight"], Wo = t[p + "self_attn.o_proj.weight"],
                Bq = cfg.QkvBias ? t[p + "self_attn.q_proj.bias"] : null,
                Bk = cfg.QkvBias ? t[p + "self_attn.k_proj.bias"] : null,
                Bv = cfg.QkvBias ? t[p + "self_attn.v_proj.bias"] : null,
                FfnNorm = t[p + "post_attention_layernorm.weight"],
                W1 = t[p + "mlp.gate_proj.weight"], W2 = t[p + "mlp.down_proj.weight"], W3 = t[p + "mlp.up_proj.weight"],
            };
        }
        return new LlamaWeights
        {
            Config = cfg, TokenEmbedding = t["model.embed_tokens.weight"], Layers = layers, FinalNorm = t["model.norm.weight"],
            LmHead = cfg.TieEmbeddings ? null : t["lm_head.weight"],
        };
    }

    /// <summary>Every tensor name the config implies, with its shape ([out, in] for projections).</summary>
    public static Dictionary<string, long[]> ExpectedShapes(ModelConfig c)
    {
        long d = c.Dim, q = c.QDim, kv = c.KvDim, ff = c.HiddenDim, v = c.VocabSize;
        var s = new Dictionary<string, long[]>(StringComparer.Ordinal)
        {
            ["model.embed_tokens.weight"] = [v, d],
            ["model.norm.weight"] = [d],
        };
        if (!c.TieEmbeddings) s["lm_head.weight"] = [v, d];
        for (int i = 0; i < c.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            s[p + "input_layernorm.weight"] = [d];
            s[p + "self_attn.q_proj.weight"] = [q, d];
            s[p + "self_attn.k_proj.weight"] = [kv, d];
            s[p + "self_attn.v_proj.weight"] = [kv, d];
            s[p + "self_attn.o_proj.weight"] = [d, q];
            if (c.QkvBias)
            {
                s[p + "self_attn.q_proj.bias"] = [q];
                s[p + "self_attn.k_proj.bias"] = [kv];
                s[p + "self_attn.v_proj.bias"] = [kv];
            }
            s[p + "post_attention_layernorm.weight"] = [d];
            s[p + "mlp.gate_proj.weight"] = [ff, d];
            s[p + "mlp.up_proj.weight"] = [ff, d];
            s[p + "mlp.down_proj.weight"] = [d, ff];
        }
        return s;
    }

    static List<string> WeightFiles(string folder)
    {
        var single = Path.Combine(folder, SingleFile);
        var index = Path.Combine(folder, IndexFile);
        if (File.Exists(index))
        {
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllBytes(index));
                var files = new List<string>();
                foreach (var p in doc.RootElement.GetProperty("weight_map").EnumerateObject())
                {
                    var file = Path.Combine(folder, p.Value.GetString() ?? throw new InvalidDataException($"{index}: weight_map['{p.Name}'] is not a file name"));
                    if (!File.Exists(file)) throw new InvalidDataException($"{index}: shard '{p.Value.GetString()}' (holding '{p.Name}') is missing");
                    files.Add(file);
                }
                return files.Distinct().ToList();
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
            {
                throw new InvalidDataException($"{index}: not a valid safetensors index (expected {{\"weight_map\": {{name: file}}}}): {e.Message}", e);
            }
        }
        if (File.Exists(single)) return [single];
        if (File.Exists(Path.Combine(folder, "pytorch_model.bin")) || File.Exists(Path.Combine(folder, "pytorch_model.bin.index.json")))
            throw new InvalidDataException($"{folder}: only PyTorch pickle weights (pytorch_model.bin) found; convert them to safetensors (model.safetensors) first");
        throw new FileNotFoundException($"{folder}: no weights found (expected {SingleFile} or {IndexFile})");
    }

    /// <summary>Binds and validates config.json (and generation_config.json for BOS/EOS). Throws <see cref="InvalidDataException"/> naming the field.</summary>
    public static ModelConfig ReadConfig(string folder)
    {
        var path = Path.Combine(folder, ConfigFile);
        if (!File.Exists(path)) throw new FileNotFoundException($"{folder}: no {ConfigFile}; not a Hugging Face model folder", path);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e); }
        using (doc)
        {
            var j = new JsonFields(path, doc.RootElement);
            var modelType = j.String("model_type") ?? throw new InvalidDataException($"{path}: model_type is missing");
            if (modelType is not ("llama" or "qwen2" or "mistral"))
                throw new InvalidDataException($"{path}: model_type '{modelType}' is not supported (supported: llama, qwen2, mistral)");
            var act = j.String("hidden_act") ?? "silu";
            if (act != "silu") throw new InvalidDataException($"{path}: hidden_act '{act}' is not supported (Llama-family SwiGLU needs silu)");

            int dim = j.RequiredInt("hidden_size"), heads = j.RequiredInt("num_attention_heads");
            int? headDim = j.Int("head_dim");
            if (heads <= 0) throw new InvalidDataException($"{path}: num_attention_heads must be positive, got {heads}");
            if (headDim is null && dim % heads != 0)
                throw new InvalidDataException($"{path}: num_attention_heads ({heads}) does not divide hidden_size ({dim}) and no head_dim is given");
            int kvHeads = j.Int("num_key_value_heads") ?? heads;
            if (kvHeads <= 0 || heads % kvHeads != 0)
                throw new InvalidDataException($"{path}: num_key_value_heads ({kvHeads}) must divide num_attention_heads ({heads})");

            // Llama's attention_bias puts a bias on o_proj too, and mlp_bias on the MLP; the runtime has neither.
            bool qkvBias = modelType == "qwen2";   // Qwen2 always has q/k/v biases (and none on o_proj)
            if (modelType != "qwen2" && j.Bool("attention_bias") == true)
                throw new InvalidDataException($"{path}: attention_bias=true (biases on q/k/v/o projections) is not supported");
            if (j.Bool("mlp_bias") == true) throw new InvalidDataException($"{path}: mlp_bias=true is not supported");

            int maxPos = j.RequiredInt("max_position_embeddings");
            int? window = null;
            if (modelType == "mistral") window = j.Int("sliding_window");
            if (modelType == "qwen2" && j.Bool("use_sliding_window") == true)
                throw new InvalidDataException($"{path}: use_sliding_window=true (Qwen2 per-layer sliding window, max_window_layers) is not supported");
            // A window at least as long as the context is full attention; keep the config simple in that case.
            if (window is { } w && w >= maxPos) window = null;

            var gen = ReadGenerationIds(folder);
            int bos = gen.Bos ?? j.Int("bos_token_id") ?? 1;
            var eos = gen.Eos ?? j.IntOrList("eos_token_id") ?? [2];
            if (eos.Count == 0) throw new InvalidDataException($"{path}: eos_token_id is an empty list");

            var cfg = new ModelConfig
            {
                ModelType = modelType, Dim = dim, HiddenDim = j.RequiredInt("intermediate_size"),
                Layers = j.RequiredInt("num_hidden_layers"), Heads = heads, KvHeads = kvHeads, HeadDim = headDim ?? 0,
                VocabSize = j.RequiredInt("vocab_size"), MaxSeqLen = maxPos,
                RopeTheta = j.Double("rope_theta") ?? 10000.0, RopeScaling = ReadRopeScaling(path, doc.RootElement),
                RopeLayout = RopeLayout.HalfSplit, NormEps = j.Double("rms_norm_eps") ?? 1e-6,   // HF's LlamaConfig default
                TieEmbeddings = j.Bool("tie_word_embeddings") ?? false,
                QkvBias = qkvBias, SlidingWindow = window, BosId = bos, EosIds = eos,
            };
            try { return cfg.Validate(); }
            catch (InvalidDataException e) { throw new InvalidDataException($"{path}: {e.Message}", e); }
        }
    }

    static RopeScaling? ReadRopeScaling(string path, JsonElement root)
    {
        if (!root.TryGetProperty("rope_scaling", out var rs) || rs.ValueKind == JsonValueKind.Null) return null;
        if (rs.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{path}: rope_scaling must be an object or null");
        var j = new JsonFields(path + " rope_scaling", rs);
        var type = j.String("rope_type") ?? j.String("type")
            ?? throw new InvalidDataException($"{path}: rope_scaling has neither 'rope_type' nor 'type'");
        switch (type)
        {
            case "default": return null;
            case "llama3":
                return new RopeScaling("llama3",
                    Factor: j.Double("factor") ?? throw new InvalidDataException($"{path}: rope_scaling.factor is required for llama3"),
                    LowFreqFactor: j.Double("low_freq_factor") ?? throw new InvalidDataException($"{path}: rope_scaling.low_freq_factor is required for llama3"),
                    HighFreqFactor: j.Double("high_freq_factor") ?? throw new InvalidDataException($"{path}: rope_scaling.high_freq_factor is required for llama3"),
                    OriginalMaxPositionEmbeddings: j.Int("original_max_position_embeddings") ?? throw new InvalidDataException($"{path}: rope_scaling.original_max_position_embeddings is required for llama3"));
            default:
                throw new InvalidDataException($"{path}: rope_scaling type '{type}' is not supported (supported: default, llama3); refusing rather than computing wrong positions");
        }
    }

    static (int? Bos, IReadOnlyList<int>? Eos) ReadGenerationIds(string folder)
    {
        var path = Path.Combine(folder, GenerationConfigFile);
        if (!File.Exists(path)) return (null, null);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var j = new JsonFields(path, doc.RootElement);
            return (j.Int("bos_token_id"), j.IntOrList("eos_token_id"));
        }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e); }
    }

    static string Preview(List<string> names) => string.Join(", ", names.Take(8)) + (names.Count > 8 ? ", ..." : "");

    /// <summary>Typed access to a JSON object that names the file and field in every error.</summary>
    internal sealed class JsonFields(string path, JsonElement obj)
    {
        JsonElement? Get(string name) =>
            obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        public string? String(string name) => Get(name) is { } v
            ? v.ValueKind == JsonValueKind.String ? v.GetString() : throw Bad(name, "a string", v) : null;

        public int? Int(string name) => Get(name) is { } v
            ? v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw Bad(name, "an integer", v) : null;

        public int RequiredInt(string name) => Int(name) ?? throw new InvalidDataException($"{path}: required field '{name}' is missing");

        public double? Double(string name) => Get(name) is { } v
            ? v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Bad(name, "a number", v) : null;

        public bool? Bool(string name) => Get(name) is { } v
            ? v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Bad(name, "true or false", v) : null;

        public IReadOnlyList<int>? IntOrList(string name)
        {
            if (Get(name) is not { } v) return null;
            if (v.ValueKind == JsonValueKind.Number) return [Int(name)!.Value];
            if (v.ValueKind == JsonValueKind.Array)
                return v.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int i) ? i : throw Bad(name, "an integer or a list of integers", v)).ToArray();
            throw Bad(name, "an integer or a list of integers", v);
        }

        InvalidDataException Bad(string name, string what, JsonElement v) => new($"{path}: field '{name}' must be {what}, got {v.GetRawText()}");
    }
}
