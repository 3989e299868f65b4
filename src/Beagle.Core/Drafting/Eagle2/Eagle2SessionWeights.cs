using Beagle.Compute;
using Beagle.Drafting.Kernels;
using static TorchSharp.torch;

namespace Beagle.Drafting;

/// <summary>
/// The EAGLE-2 draft's inference weights as tensors (<see cref="Eagle2Draft.Fold"/>): post_norm folded into the MLP,
/// q and k fused with their rotary partners. Owned by the session that folded them.
/// </summary>
internal sealed class Eagle2FoldedWeights : IDisposable
{
    public required Tensor WfcT;   // [2D, D]
    public required Tensor Bfc;    // [D]
    public required Tensor WqkvT;  // [D, 2(Q+K) + K]: q | k | q-partner | k-partner | v
    public required Tensor WoT;    // [Q, D]
    public required Tensor W13T;   // [D, 2F], post_norm folded in
    public required Tensor W2T;    // [F, D]
    public long Bytes => DraftModelBase.TensorBytes(WfcT) + DraftModelBase.TensorBytes(Bfc) + DraftModelBase.TensorBytes(WqkvT)
        + DraftModelBase.TensorBytes(WoT) + DraftModelBase.TensorBytes(W13T) + DraftModelBase.TensorBytes(W2T);
    public void Dispose() { WfcT.Dispose(); Bfc.Dispose(); WqkvT.Dispose(); WoT.Dispose(); W13T.Dispose(); W2T.Dispose(); }
}

/// <summary>The folded matrices packed for the CPU's C# products and the fusion bias on the host (<see cref="Eagle2TensorSession"/> on the CPU), shared by the draft's sessions.</summary>
internal sealed record Eagle2PackedWeights(PackedMatrix Wo, PackedMatrix W13, PackedMatrix W2, PackedMatrix Wfc, PackedMatrix Wqkv, float[] Bfc) : ISessionWeights
{
    public long Bytes => sizeof(float) * (Wo.PackedFloats + W13.PackedFloats + W2.PackedFloats + Wfc.PackedFloats + Wqkv.PackedFloats + Bfc.LongLength);
}

/// <summary>Host copies for <see cref="ManagedEagle2Session"/>, shared by the draft's sessions.</summary>
/// <param name="Common">The weights every managed session reads.</param>
/// <param name="WfcT">Fusion [2D, D].</param>
/// <param name="Bfc">Fusion bias [D].</param>
/// <param name="WqkvT">[D, 2(Q+K) + K]: q | k | q-partner | k-partner | v.</param>
internal sealed record ManagedEagle2Weights(ManagedWeights Common, float[] WfcT, float[] Bfc, float[] WqkvT) : ISessionWeights
{
    public long Bytes => Common.Bytes + sizeof(float) * ((long)WfcT.Length + Bfc.Length + WqkvT.Length);
}
