using System.Text.Json.Nodes;
using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Models;
using Beagle.Tests.Infrastructure;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Checkpoints;

/// <summary>
/// stories260K exported to the Hugging Face layout (q/k rows permuted to half-split) and read back by the HF loader
/// must compute the same function as the llama2.c-loaded model: that checks the permutation, the half-split rotary
/// path, the tensor naming and the safetensors reader against an independent code path.
/// </summary>
public class HuggingFaceCheckpointTests
{
    static readonly int[] Prompt = TestAssets.ReadIds("prompt_once_upon_a_time.ids.txt");

    static string Export(TempDir dir, HuggingFaceExportOptions? options = null)
    {
        using var w = Llama2cCheckpoint.Load(TestAssets.ModelPath);
        var folder = dir.File("hf");
        HuggingFaceExport.Write(w, folder, options);
        return folder;
    }

    static float[,] PromptLogits(LlamaModel model)
    {
        using var cache = model.NewCache();
        using var o = model.Forward(cache, Prompt, Enumerable.Range(0, Prompt.Length).ToArray());
        var flat = o.Logits.data<float>().ToArray();
        var r = new float[Prompt.Length, model.Config.VocabSize];
        Buffer.BlockCopy(flat, 0, r, 0, flat.Length * 4);
        return r;
    }

    static float MaxDiff(float[,] a, float[,] b)
    {
        float m = 0;
        for (int i = 0; i < a.GetLength(0); i++) for (int j = 0; j < a.GetLength(1); j++) m = Math.Max(m, Math.Abs(a[i, j] - b[i, j]));
        return m;
    }

    static int ArgMax(float[,] a, int row)
    {
        int best = 0;
        for (int j = 1; j < a.GetLength(1); j++) if (a[row, j] > a[row, best]) best = j;
        return best;
    }

    static int[] Greedy(LlamaModel model, int steps) =>
        new Beagle.Decoding.Generator(model, TestAssets.StoriesTokenizer).Generate(Prompt, new GenerationOptions { MaxNewTokens = steps })
            .SelectMany(c => c.TokenIds).ToArray();

    [Fact]
    public void Exported_fp32_folder_loads_with_half_split_rope_and_matches_the_llama2c_model()
    {
        using var dir = TestAssets.TempDir();
        var folder = Export(dir);
        using var w = HuggingFaceCheckpoint.Load(folder);
        Assert.Equal(RopeLayout.HalfSplit, w.Config.RopeLayout);
        Assert.Equal("llama", w.Config.ModelType);
        Assert.True(w.Config.TieEmbeddings);
        using var hf = new LlamaModel(w);

        var diff = MaxDiff(PromptLogits(TestAssets.Stories), PromptLogits(hf));
        Assert.True(diff < 1e-4, $"max |logit difference| = {diff}");   // fp32 rounding: the HF layout permutes head dimensions, so sums run in another order
        Assert.Equal(Greedy(TestAssets.Stories, 60), Greedy(hf, 60));
    }

    [Fact]
    public void Without_the_row_permutation_the_logits_differ_so_the_test_above_can_fail()
    {
        using var dir = TestAssets.TempDir();
        var folder = Export(dir);
        // Undo the permutation in the file: write the interleaved rows under the HF names.
        using (var w = Llama2cCheckpoint.Load(TestAssets.ModelPath))
        {
            var tensors = new List<KeyValuePair<string, Tensor>>();
            var st = TorchSharp.PyBridge.Safetensors.LoadStateDict(Path.Combine(folder, "model.safetensors"));
            foreach (var (k, v) in st) tensors.Add(new(k, v));
            for (int i = 0; i < w.Config.Layers; i++)
                tensors[tensors.FindIndex(t => t.Key == $"model.layers.{i}.self_attn.q_proj.weight")] = new($"model.layers.{i}.self_attn.q_proj.weight", w.Layers[i].Wq);
            SafetensorsFile.Write(Path.Combine(folder, "model.safetensors"), tensors);
        }
        using var bad = HuggingFaceCheckpoint.Load(folder);
        using var model = new LlamaModel(bad);
        Assert.True(MaxDiff(PromptLogits(TestAssets.Stories), PromptLogits(model)) > 1e-3);
    }

    [Fact]
    public void Bf16_export_loads_and_stays_close()
    {
        using var dir = TestAssets.TempDir();
        var folder = Export(dir, new HuggingFaceExportOptions { BFloat16 = true });
        Assert.Contains("\"BF16\"", File.ReadAllText(Path.Combine(folder, "model.safetensors")).Substring(0, 2000));
        using var w = HuggingFaceCheckpoint.Load(folder);
        Assert.Equal(ScalarType.Float32, w.TokenEmbedding.dtype);
        using var hf = new LlamaModel(w);
        var (fp32, bf16) = (PromptLogits(TestAssets.Stories), PromptLogits(hf));
        var diff = MaxDiff(fp32, bf16);
        // bf16 keeps 8 mantissa bits (relative error 2^-9 per weight); through 5 layers that measured 0.078 on
        // logits of magnitude ~10, so 0.15 is a bf16-sized bound that still catches a wrong layout (> 1).
        Assert.True(diff < 0.15, $"max |logit difference| = {diff}");
        Assert.True(diff > 0, "bf16 weights should not be bit-identical to fp32");
        for (int i = 0; i < Prompt.Length; i++) Assert.Equal(ArgMax(fp32, i), ArgMax(bf16, i));
        Assert.Equal(20, Greedy(hf, 20).Length);
    }

    [Fact]
    public void Sharded_export_loads_equal_to_the_single_file()
    {
        using var dir = TestAssets.TempDir();
        var folder = Export(dir, new HuggingFaceExportOptions { Shards = 2 });
        Assert.False(File.Exists(Path.Combine(folder, "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(folder, "model-00001-of-00002.safetensors")));
        Assert.True(File.Exists(Path.Combine(folder, "model-00002-of-00002.safetensors")));
        using var w = HuggingFaceCheckpoint.Load(folder);
        using var hf = new LlamaModel(w);
        var diff = MaxDiff(PromptLogits(TestAssets.Stories), PromptLogits(hf));
        Assert.True(diff < 1e-4, $"max |logit difference| = {diff}");   // fp32 rounding: the HF layout permutes head dimensions, so sums run in another order
    }

    [Fact]
    public void A_missing_tensor_is_named()
    {
        using var dir = TestAssets.TempDir();
        var folder = Export(dir);
        var st = TorchSharp.PyBridge.Safetensors.LoadStateDict(Path.Combine(folder, "model.safetensors"));
        st.Remove("model.layers.3.mlp.up_proj.weight");
        st["model.layers.3.mlp.extra.weight"] = zeros(2);
        SafetensorsFile.Write(Path.Combine(folder, "model.safetensors"), st);
        var e = Assert.Throws<InvalidDataException>(() => HuggingFaceCheckpoint.Load(folder));
        Assert.Contains("model.layers.3.mlp.up_proj.weight", e.Message);
        Assert.Contains("model.layers.3.mlp.extra.weight", e.Message);
    }

    [Fact]
    public void A_tensor_with_the_wrong_shape_is_named()
    {
        using var dir = TestAssets.TempDir();
        var folder = Export(dir);
        var st = TorchSharp.PyBridge.Safetensors.LoadStateDict(Path.Combine(folder, "model.safetensors"));
        st["model.norm.weight"] = zeros(63);
        SafetensorsFile.Write(Path.Combine(folder, "model.safetensors"), st);
        var e = Assert.Throws<InvalidDataException>(() => HuggingFaceCheckpoint.Load(folder));
        Assert.Contains("model.norm.weight", e.Message);
        Assert.Contains("[63]", e.Message);
    }

    [Fact]
    public void A_truncated_safetensors_file_is_refused()
    {
        using var dir = TestAssets.TempDir();
        var folder = Export(dir);
        var file = Path.Combine(folder, "model.safetensors");
        var bytes = File.ReadAllBytes(file);
        File.WriteAllBytes(file, bytes[..(bytes.Length - 100)]);
        var e = Assert.Throws<InvalidDataException>(() => HuggingFaceCheckpoint.Load(folder));
        Assert.Contains("truncated", e.Message);
    }

    static string ConfigWith(TempDir dir, Action<JsonObject> edit)
    {
        var folder = Export(dir);
        var path = Path.Combine(folder, "config.json");
        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(json);
        File.WriteAllText(path, json.ToJsonString());
        return folder;
    }

    [Theory]
    [InlineData("rope_scaling", "{\"rope_type\":\"yarn\",\"factor\":4.0}", "yarn")]
    [InlineData("rope_scaling", "{\"type\":\"linear\",\"factor\":2.0}", "linear")]
    [InlineData("model_type", "\"gpt2\"", "gpt2")]
    [InlineData("hidden_act", "\"gelu\"", "hidden_act")]
    [InlineData("num_attention_heads", "7", "num_attention_heads")]
    [InlineData("num_key_value_heads", "3", "num_key_value_heads")]
    [InlineData("attention_bias", "true", "attention_bias")]
    [InlineData("vocab_size", "\"512\"", "vocab_size")]
    public void Unsupported_config_values_are_refused_naming_the_field(string field, string json, string expectedInMessage)
    {
        using var dir = TestAssets.TempDir();
        var folder = ConfigWith(dir, c => c[field] = JsonNode.Parse(json));
        var e = Assert.Throws<InvalidDataException>(() => HuggingFaceCheckpoint.ReadConfig(folder));
        Assert.Contains(expectedInMessage, e.Message);
    }

    [Fact]
    public void Llama3_rope_scaling_mistral_window_and_eos_lists_are_bound()
    {
        using var dir = TestAssets.TempDir();
        var folder = ConfigWith(dir, c =>
        {
            c["model_type"] = "mistral";
            c["sliding_window"] = 128;
            c["rope_scaling"] = JsonNode.Parse("{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":256}");
        });
        File.WriteAllText(Path.Combine(folder, "generation_config.json"), "{\"bos_token_id\":1,\"eos_token_id\":[1,2]}");
        var cfg = HuggingFaceCheckpoint.ReadConfig(folder);
        Assert.Equal("mistral", cfg.ModelType);
        Assert.Equal(128, cfg.SlidingWindow);
        Assert.Equal(new RopeScaling("llama3", 8.0, 1.0, 4.0, 256), cfg.RopeScaling);
        Assert.Equal([1, 2], cfg.EosIds);
    }

    [Fact]
    public void Qwen2_requires_qkv_biases_and_refuses_its_sliding_window()
    {
        using var dir = TestAssets.TempDir();
        var folder = ConfigWith(dir, c => c["model_type"] = "qwen2");
        Assert.True(HuggingFaceCheckpoint.ReadConfig(folder).QkvBias);
        var e = Assert.Throws<InvalidDataException>(() => HuggingFaceCheckpoint.Load(folder));
        Assert.Contains("self_attn.q_proj.bias", e.Message);

        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))!.AsObject();
        cfg["use_sliding_window"] = true;
        File.WriteAllText(Path.Combine(folder, "config.json"), cfg.ToJsonString());
        e = Assert.Throws<InvalidDataException>(() => HuggingFaceCheckpoint.ReadConfig(folder));
        Assert.Contains("use_sliding_window", e.Message);
    }
}
