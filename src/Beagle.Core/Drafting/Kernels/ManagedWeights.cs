using static TorchSharp.torch;

namespace Beagle.Drafting.Kernels;

/// <summary>
/// The host weights every managed session reads (<see cref="ManagedSessionBase"/>): the target embedding [V, D], the
/// block tail (Wo [Q, D], gate|up [D, 2F] with the MLP norm folded in, down [F, D]), the LM-head rows [Vd, D] and the
/// rotary tables [maxPos, hd]. An architecture's own record holds these beside its own matrices; it is built once per
/// draft (<see cref="DraftModelBase.SessionWeights{T}"/>) and shared, read-only, by all its sessions. Building folds the
/// norms and copies ~0.7 MB for stories260K: about a millisecond, which every generation would pay if each session
/// made its own copies (a short generation's speedup measured ~1.3x instead of ~1.8x).
/// </summary>
internal sealed record ManagedWeights
{
    public required float[] Emb, WoT, W13T, W2T, Lm, Cos, Sin;
    public required int LmRows;

    public long Bytes => sizeof(float) * ((long)Emb.Length + WoT.Length + W13T.Length + W2T.Length + Lm.Length + Cos.Length + Sin.Length);

    /// <summary>A host copy of a tensor's values (in a dispose scope, so that no temporary of the chain is finalised mid-call).</summary>
    public static float[] Host(Tensor t) { using var scope = NewDisposeScope(); return t.detach().to(float32).cpu().contiguous().data<float>().ToArray(); }
}
