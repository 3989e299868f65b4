namespace Beagle.Drafting.Kernels;

/// <summary>
/// Weights a draft prepares once for its sessions and shares among them (host copies for the managed kernel, packed
/// matrices for the tensor session's CPU products): cached by <see cref="DraftModelBase.SessionWeights{T}"/> and
/// <see cref="DraftModelBase.PackedSessionWeights{T}"/>, dropped by <see cref="DraftModelBase.InvalidateSessionWeights"/>.
/// Each architecture names its own record's fields (its folder holds them).
/// </summary>
internal interface ISessionWeights
{
    /// <summary>Bytes held, counted in <see cref="DraftModelBase.WeightBytes"/>.</summary>
    long Bytes { get; }
}
