using System.Text.Json;
using System.Text.Json.Nodes;
using Beagle.Models;
using static TorchSharp.torch;

namespace Beagle.Checkpoints;

/// <summary>Options for <see cref="HuggingFaceExport.Write"/>.</summary>
public sealed record HuggingFaceExportOptions
{
    /// <summary>Store weights as bfloat16 instead of float32 (halves the size; loses precision).</summary>
    public bool BFloat16 { get; init; }
    /// <summary>Number of safetensors shards; 1 writes model.safetensors, more write model-0000k-of-0000n.safetensors + an index.</summary>
    public int Shards { get; init; } = 1;
}

/// <summary>
/// Writes <see cref="LlamaWeights"/> as a Hugging Face <c>llama</c> folder (config.json, generation_config.json,
/// safetensors). Interleaved (llama2.c/Meta) q/k rows are permuted to the half-split layout exactly as HF's
/// convert_llama_weights_to_hf.py does, so transformers' LlamaForCausalLM computes the same function.
/// </summary>
public static class HuggingFaceExport
{
    public static void Write(LlamaWeights weights, string folder, HuggingFaceExportOptions? options = null)
    {
        options ??= new HuggingFaceExportOptions();
        var c = weights.Config.Validate();
        if (options.Shards < 1) throw new ArgumentOutOfRangeException(nameof(options), $"Shards must be >= 1, got {options.Shards}");
        if (c.SlidingWindow is not null || c.QkvBias)
            throw new NotSupportedException($"exporting a {c.ModelType} model with sliding window or qkv bias as 'llama' would change its math");
        Directory.CreateDirectory(folder);

        var dtype = options.BFloat16 ? bfloat16 : float32;
        var tensors = new List<KeyValuePair<string, Tensor>>();
        using var scope = NewDisposeScope();
        void Add(string name, Tensor t) => tensors.Add(new(name, t.to(dtype).contiguous()));
        bool permute = c.RopeLayout == RopeLayout.Interleaved;

        Add("model.embed_tokens.weight", weights.TokenEmbedding);
        for (int i = 0; i < c.Layers; i++)
        {
            var l = weights.Layers[i];
            string p = $"model.layers.{i}.";
            Add(p + "input_layernorm.weight", l.AttnNorm);
            Add(p + "self_attn.q_proj.weight", permute ? InterleavedToHalfSplit(l.Wq, c.Heads) : l.Wq);
            Add(p + "self_attn.k_proj.weight", permute ? InterleavedToHalfSplit(l.Wk, c.KvHeads) : l.Wk);
            Add(p + "self_attn.v_proj.weight", l.Wv);
            Add(p + "self_attn.o_proj.weight", l.Wo);
            Add(p + "post_attention_layernorm.weight", l.FfnNorm);
            Add(p + "mlp.gate_proj.weight", l.W1);
            Add(p + "mlp.up_proj.weight", l.W3);
            Add(p + "mlp.down_proj.weight", l.W2);
        }
        Add("model.norm.weight", weights.FinalNorm);
        if (!c.TieEmbeddings) Add("lm_head.weight", weights.LmHead ?? throw new InvalidDataException("untied model without an LM head"));

        WriteShards(folder, tensors, options.Shards);
        WriteJson(Path.Combine(folder, HuggingFaceCheckpoint.ConfigFile), Config(c, options.BFloat16 ? "bfloat16" : "float32"));
        WriteJson(Path.Combine(folder, HuggingFaceCheckpoint.GenerationConfigFile), new JsonObject
        {
            ["bos_token_id"] = c.BosId,
            ["eos_token_id"] = c.EosIds.Count == 1 ? c.EosIds[0] : new JsonArray(c.EosIds.Select(e => (JsonNode)e).ToArray()),
        });
    }

    /// <summary>
    /// [heads*hd, D] with each head's rows in (2i, 2i+1) pair order → the same rows in (i, i+hd/2) order.
    /// HF: <c>w.view(heads, hd/2, 2, D).transpose(1, 2).reshape(heads*hd, D)</c>.
    /// </summary>
    public static Tensor InterleavedToHalfSplit(Tensor w, int heads)
    {
        long rows = w.shape[0], cols = w.shape[1];
        return w.view(heads, rows / heads / 2, 2, cols).transpose(1, 2).reshape(rows, cols);
    }

    static JsonObject Config(ModelConfig c, string dtype)
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["hidden_size"] = c.Dim,
            ["intermediate_size"] = c.HiddenDim,
            ["num_hidden_layers"] = c.Layers,
            ["num_attention_heads"] = c.Heads,
            ["num_key_value_heads"] = c.KvHeads,
            ["head_dim"] = c.EffectiveHeadDim,
            ["vocab_size"] = c.VocabSize,
            ["max_position_embeddings"] = c.MaxSeqLen,
            ["rope_theta"] = c.RopeTheta,
            ["rms_norm_eps"] = c.NormEps,
            ["tie_word_embeddings"] = c.TieEmbeddings,
            ["hidden_act"] = "silu",
            ["attention_bias"] = false,
            ["mlp_bias"] = false,
            ["bos_token_id"] = c.BosId,
            ["eos_token_id"] = c.EosIds.Count == 1 ? c.EosIds[0] : new JsonArray(c.EosIds.Select(e => (JsonNode)e).ToArray()),
            ["torch_dtype"] = dtype,
            ["rope_scaling"] = c.RopeScaling is { } s
                ? new JsonObject
                {
                    ["rope_type"] = s.Type, ["factor"] = s.Factor, ["low_freq_factor"] = s.LowFreqFactor,
                    ["high_freq_factor"] = s.HighFreqFactor, ["original_max_position_embeddings"] = s.OriginalMaxPositionEmbeddings,
                }
                : null,
        };
        return o;
    }

    static void WriteShards(string folder, List<KeyValuePair<string, Tensor>> tensors, int shards)
    {
        if (shards == 1) { SafetensorsFile.Write(Path.Combine(folder, HuggingFaceCheckpoint.SingleFile), tensors); return; }
        // Contiguous runs of tensors of roughly equal byte size, as HF's save_pretrained splits by max_shard_size.
        long total = tensors.Sum(t => t.Value.NumberOfElements * t.Value.ElementSize);
        var weightMap = new JsonObject();
        int k = 0; long acc = 0; var current = new List<KeyValuePair<string, Tensor>>();
        for (int i = 0; i < tensors.Count; i++)
        {
            current.Add(tensors[i]);
            acc += tensors[i].Value.NumberOfElements * tensors[i].Value.ElementSize;
            bool last = i == tensors.Count - 1;
            if (last || (k < shards - 1 && acc >= total * (k + 1) / shards && tensors.Count - 1 - i >= shards - 1 - k))
            {
                var name = $"model-{k + 1:D5}-of-{shards:D5}.safetensors";
                SafetensorsFile.Write(Path.Combine(folder, name), current);
                foreach (var t in current) weightMap[t.Key] = name;
                current = []; k++;
            }
        }
        if (k != shards) throw new InvalidOperationException($"wrote {k} shards instead of {shards} (too few tensors?)");
        WriteJson(Path.Combine(folder, HuggingFaceCheckpoint.IndexFile), new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = total },
            ["weight_map"] = weightMap,
        });
    }

    static void WriteJson(string path, JsonNode node) =>
        File.WriteAllText(path, node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
}
