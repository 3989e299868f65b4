using static TorchSharp.torch;

namespace Beagle.Models;

/// <summary>Tensor ops TorchSharp does not offer in the form the hot paths need.</summary>
internal static class TorchOps
{
    /// <summary>
    /// Attention scores with an additive mask in one op: <c>mask + q·kᵀ</c>. q: [B, M, hd], kT: [B, hd, S],
    /// mask: broadcastable to [B, M, S]. Returns a new [B, M, S] tensor.
    /// TorchSharp 0.107's <c>Tensor.baddbmm(batch1, batch2)</c> hands its arguments to libtorch rotated: <c>x.baddbmm(y, z)</c>
    /// computes <c>z + x·y</c>, not <c>x + y·z</c> (a shape error, or a wrong result for square shapes). The call below is
    /// written for that order; <c>ModelTests.MaskedScores_equals_bmm_plus_mask</c> fails if a TorchSharp update fixes it.
    /// </summary>
    public static Tensor MaskedScores(Tensor mask, Tensor q, Tensor kT) => q.baddbmm(kT, mask, 1f, 1f);
}
