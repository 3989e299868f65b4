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
