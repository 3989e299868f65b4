using static TorchSharp.torch;

namespace Beagle.Drafting.Kernels;

/// <summary>
/// Host copies of a draft's folded weights for the managed kernel, built once per draft (<see
/// cref="DraftModelBase.SessionWeights"/>) and shared, read-only, by all its sessions. Building them folds the norms,
/// precomputes the Beagle query table and copies ~0.7 MB for stories260K: about a millisecond, which every generation
/// used to pay when each session made its own copies (a short generation's speedup measured ~1.3x instead of ~1.8x).
/// </summary>
internal sealed record ManagedWeights
{
    // Both architectures: the target embedding [V, D], the block tail (Wo [Q, D], gate|up [D, 2F], down [F, D]),
    // LM-head rows [Vd, D] and the rotary tables [maxPos, hd].
    public required float[] Emb, WoT, W13T, W2T, Lm, Cos, Sin;
    public required int LmRows;
    // Beagle: the query table [V, 2Q] (q | q-partner of every token) and k | k-partner | v [D, 3K].
    public float[]? QTable, WkvT;
    // EAGLE-2: fusion [2D, D] + bias [D]; q | k | q-partner | k-partner | v [D, 2(Q+K) + K].
    public float[]? WfcT, Bfc, WqkvT;

    /// <summary>Bytes of every array held (the embedding and LM-head rows are host copies of the target's).</summary>
    public long Bytes => sizeof(float) * new[] { Emb, WoT, W13T, W2T, Lm, Cos, Sin, QTable, WkvT, WfcT, Bfc, WqkvT }.Sum(a => a?.LongLength ?? 0);

    /// <summary>A host copy of a tensor's values (in a dispose scope, so that no temporary of the chain is finalised mid-call).</summary>
    public static float[] Host(Tensor t) { using var scope = NewDisposeScope(); return t.detach().to(float32).cpu().contiguous().data<float>().ToArray(); }
}
