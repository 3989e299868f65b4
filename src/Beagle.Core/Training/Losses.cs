using Beagle.Models;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Beagle.Training;

/// <summary>
/// Training losses (docs/method.md, "Two-stage block-attention training"): soft cross-entropy against the target's distribution, the EAGLE
/// regression loss ("vloss") between draft and true states, and the feature noise.
/// </summary>
public static class Losses
{
    /// <summary>
    /// The target's next-token distribution from true states, recomputed through the frozen LM head (not stored):
    /// states [..., D] → probabilities [..., V], or [..., N] over <paramref name="keptIds"/> (a reduced draft
    /// vocabulary, [N] int64 target ids), renormalised over the kept ids. No gradient.
    /// </summary>
    public static Tensor TargetProbs(LlamaModel target, Tensor states, Tensor? keptIds = null)
    {
        using var _ = no_grad();
        var logits = target.Logits(states);
        if (keptIds is not null) logits = logits.index_select(-1, keptIds);
        return F.softmax(logits, -1);   // softmax over the kept ids = renormalised target probabilities
    }

    /// <summary>Soft cross-entropy per row: -Σ_t p(t) log q(t). draftLogits, targetProbs: [N, V] → [N].</summary>
    public static Tensor SoftCrossEntropy(Tensor draftLogits, Tensor targetProbs)
        => -(targetProbs * F.log_softmax(draftLogits, -1)).sum(-1);

    /// <summary>SmoothL1 (beta 1) per row, averaged over the feature dimension, as in EAGLE: [N, D], [N, D] → [N].</summary>
    public static Tensor SmoothL1PerRow(Tensor predicted, Tensor truth)
        => F.smooth_l1_loss(predicted, truth, reduction: nn.Reduction.None).mean([-1]);

    /// <summary>Top-1 agreement of draft and target per row (1 or 0), for the training-time acceptance estimate. [N].</summary>
    public static Tensor Top1Agreement(Tensor draftLogits, Tensor targetProbs)
    {
        using var _ = no_grad();
        return draftLogits.argmax(-1).eq(targetProbs.argmax(-1)).to(float32);
    }

    /// <summary>Beagle: Gaussian N(0, std) noise on the true states fed as keys (paper: std 0.2).</summary>
    public static Tensor GaussianNoise(Tensor states, double std, Generator gen)
        => std <= 0 ? states : states.add(Scaled(randn(states.shape, dtype: states.dtype, device: states.device, generator: gen), std), TorchScalars.One);

    /// <summary>EAGLE-2: uniform noise (rand - 0.5) * std, as in EAGLE's training code (std 0.2 → U(-0.1, 0.1)).</summary>
    public static Tensor UniformNoise(Tensor states, double std, Generator gen)
        => std <= 0 ? states : states.add(Scaled(rand(states.shape, dtype: states.dtype, device: states.device, generator: gen), std, shift: -0.5), TorchScalars.One);

    /// <summary>
    /// (t + shift) * factor, in place, with Scalars held alive across the native calls: TorchSharp's implicit
    /// double→Scalar conversion can be finalised mid-call (a rare "c10::Scalar::toDouble" failure seen in training).
    /// </summary>
    public static Tensor Scaled(Tensor t, double factor, double shift = 0)
    {
        using var f = factor.ToScalar();
        if (shift != 0) { using var sh = shift.ToScalar(); t.add_(sh, TorchScalars.One); }
        return t.mul_(f);
    }
}
