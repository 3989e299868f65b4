using Beagle.Compute;
using Beagle.Drafting.Kernels;
using static TorchSharp.torch;

namespace Beagle.Drafting;

/// <summary>
/// The Beagle draft's inference weights as tensors (<see cref="BeagleDraft.Fold"/>): norm weights folded into the
/// matmuls, each projection fused with its rotary partner so that one product gives both halves of the rotation.
/// Owned by the session that folded them.
/// </summary>
internal sealed class BeagleFoldedWeights : IDisposable
{
    public required Tensor WqT;    // [D, 2Q]: q | q-partner, q_norm folded in
    public required Tensor WkvT;   // [D, 2K + K]: k | k-partner | v, kv_norm folded in
    public required Tensor WoT;    // [Q, D]
    public required Tensor W13T;   // [D, 2F], mlp_norm folded in
    public required Tensor W2T;    // [F, D]
    /// <summary>
    /// [V, 2Q] = RMSNorm(E) · WqT for every token, or null. Queries depend only on the token, so for a small vocabulary
    /// the whole query projection (embedding lookup, norm, matmul: 7 ops a step) becomes one row lookup.
    /// </summary>
    public Tensor? QueryTable;
    public long Bytes => DraftModelBase.TensorBytes(WqT) + DraftModelBase.TensorBytes(WkvT) + DraftModelBase.TensorBytes(WoT)
        + DraftModelBase.TensorBytes(W13T) + DraftModelBase.TensorBytes(W2T) + DraftModelBase.TensorBytes(QueryTable);
    public void Dispose() { WqT.Dispose(); WkvT.Dispose(); WoT.Dispose(); W13T.Dispose(); W2T.Dispose(); QueryTable?.Dispose(); }
}

/// <summary>The folded matrices packed for the CPU's C# products (<see cref="BeagleTensorSession"/> on the CPU), shared by the draft's sessions.</summary>
internal sealed record BeaglePackedWeights(PackedMatrix Wo, PackedMatrix W13, PackedMatrix W2, PackedMatrix Wkv, PackedMatrix Wq) : ISessionWeights
{
    public long Bytes => sizeof(float) * (Wo.PackedFloats + W13.PackedFloats + W2.PackedFloats + Wkv.PackedFloats + Wq.PackedFloats);
}

/// <summary>Host copies for <see cref="ManagedBeagleSession"/>, shared by the draft's sessions.</summary>
/// <param name="Common">The weights every managed session reads.</param>
/// <param name="QTable">[V, 2Q]: q | q-partner of every token (RMSNorm(e(t)) · WqT).</param>
/// <param name="WkvT">[D, 3K]: k | k-partner | v.</param>
internal sealed record ManagedBeagleWeights(ManagedWeights Common, float[] QTable, float[] WkvT) : ISessionWeights
{
    public long Bytes => Common.Bytes + sizeof(float) * ((long)QTable.Length + WkvT.Length);
}
