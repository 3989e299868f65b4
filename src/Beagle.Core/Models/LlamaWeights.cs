using static TorchSharp.torch;

namespace Beagle.Models;

/// <summary>
/// The raw weights of a Llama-family model as a reader produced them: fp32, CPU, in the layout of
/// <see cref="ModelConfig.RopeLayout"/>, PyTorch <c>nn.Linear</c> convention ([out, in]). Owned by whoever holds
/// this object; <see cref="LlamaModel"/> copies what it needs, so the weights may be disposed after it is built.
/// </summary>
public sealed class LlamaWeights : IDisposable
{
    public required ModelConfig Config { get; init; }
    public required Tensor TokenEmbedding { get; init; }   // [V, D]
    public required LayerWeights[] Layers { get; init; }
    public required Tensor FinalNorm { get; init; }        // [D]
    public Tensor? LmHead { get; init; }                   // [V, D]; null when tied to TokenEmbedding

    /// <summary>
    /// Random weights (N(0, 0.02), norms 1) of the given shape: for benchmarks of real model sizes without downloading
    /// one, and for shape tests. Deterministic for a seed.
    /// </summary>
    public static LlamaWeights Random(ModelConfig config, long seed = 0)
    {
        var c = config.Validate();
        var g = new TorchSharp.torch.Generator((ulong)seed);
        Tensor R(params long[] shape) => normal(0, 0.02, shape, generator: g);
        var layers = new LayerWeights[c.Layers];
        for (int l = 0; l < c.Layers; l++)
            layers[l] = new LayerWeights
            {
                AttnNorm = ones(c.Dim), Wq = R(c.QDim, c.Dim), Wk = R(c.KvDim, c.Dim), Wv = R(c.KvDim, c.Dim), Wo = R(c.Dim, c.QDim),
                Bq = c.QkvBias ? R(c.QDim) : null, Bk = c.QkvBias ? R(c.KvDim) : null, Bv = c.QkvBias ? R(c.KvDim) : null,
                FfnNorm = ones(c.Dim), W1 = R(c.HiddenDim, c.Dim), W2 = R(c.Dim, c.HiddenDim), W3 = R(c.HiddenDim, c.Dim),
            };
        return new LlamaWeights { Config = c, TokenEmbedding = R(c.VocabSize, c.Dim), Layers = layers, FinalNorm = ones(c.Dim), LmHead = c.TieEmbeddings ? null : R(c.VocabSize, c.Dim) };
    }

    /// <summary>Named shapes of real models, for <see cref="Random"/>.</summary>
    public static ModelConfig Shape(string name) => name.ToLowerInvariant() switch
    {
        // llama2.c's stories110M: 12 layers, d 768, 32k vocabulary (~110M parameters)
        "llama-110m" => new ModelConfig { ModelType = "llama", Dim = 768, HiddenDim = 2048, Layers = 12, Heads = 12, KvHeads = 12, VocabSize = 32000, MaxSeqLen = 1024, RopeLayout = RopeLayout.HalfSplit, EosIds = [] },
        // SmolLM2-135M-like: 30 layers, d 576, GQA 9/3, 49k vocabulary, tied (~135M parameters)
        "llama-135m" => new ModelConfig { ModelType = "llama", Dim = 576, HiddenDim = 1536, Layers = 30, Heads = 9, KvHeads = 3, VocabSize = 49152, MaxSeqLen = 2048, TieEmbeddings = true, RopeLayout = RopeLayout.HalfSplit, RopeTheta = 100000, EosIds = [] },
        _ => throw new ArgumentException($"unknown model shape '{name}' (known: llama-110m, llama-135m)"),
    };

    public void Dispose()
    {
        TokenEmbedding.Dispose(); FinalNorm.Dispose(); LmHead?.Dispose();
        foreach (var l in Layers) l.Dispose();
    }
}

/// <summary>One decoder layer's weights, [out, in] each.</summary>
public sealed class LayerWeights : IDisposable
{
    public required Tensor AttnNorm { get; init; }  // [D]
    public required Tensor Wq { get; init; }        // [H*hd, D]
    public required Tensor Wk { get; init; }        // [kvH*hd, D]
    public required Tensor Wv { get; init; }        // [kvH*hd, D]
    public required Tensor Wo { get; init; }        // [D, H*hd]
    public Tensor? Bq { get; init; }                // [H*hd] (qwen2)
    public Tensor? Bk { get; init; }                // [kvH*hd]
    public Tensor? Bv { get; init; }                // [kvH*hd]
    public required Tensor FfnNorm { get; init; }   // [D]
    public required Tensor W1 { get; init; }        // gate [Hff, D]
    public required Tensor W2 { get; init; }        // down [D, Hff]
    public required Tensor W3 { get; init; }        // up   [Hff, D]

    public void Dispose()
    {
        foreach (var t in new[] { AttnNorm, Wq, Wk, Wv, Wo, Bq, Bk, Bv, FfnNorm, W1, W2, W3 }) t?.Dispose();
    }
}
