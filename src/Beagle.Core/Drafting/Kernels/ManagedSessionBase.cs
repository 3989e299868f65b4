using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Beagle.Drafting.Kernels;

/// <summary>
/// What the managed draft sessions share: the protocol plumbing around their kernels. Commit takes true states as a
/// tensor (any device/dtype: copied to the CPU once) or as a plain array (no tensor op: the speculative strategy reads
/// the verifying forward's hidden rows in place); Expand wraps the array result in a tensor for callers that want one.
/// </summary>
internal abstract class ManagedSessionBase(int dim, int capacity, int vocabSize) : IDraftSession, IArrayDraftSession
{
    /// <summary>This round's expanded nodes and their draft-state slots.</summary>
    protected RoundTree Round { get; } = new(DraftModelBase.MaxRoundNodes);
    protected int Dim => dim;
    protected int Capacity => capacity;

    public int Length { get; protected set; }
    public int VocabSize => vocabSize;
    public abstract bool ConcatDraftStates { get; set; }

    /// <summary>Appends m accepted positions: tokens [m] and their true states hidden [m * Dim] (validated).</summary>
    protected abstract void CommitRows(ReadOnlySpan<int> tokens, ReadOnlySpan<float> hidden);

    public abstract float[] ExpandToArray(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents);

    public void Commit(ReadOnlySpan<int> tokens, Tensor hidden)
    {
        if (tokens.Length == 0) return;
        DraftModelBase.CheckCommit(Round.Count, hidden, tokens.Length, dim, Length, capacity);
        using var h = hidden.detach().to(float32).cpu().contiguous();
        CommitRows(tokens, MemoryMarshal.Cast<byte, float>(h.bytes));
    }

    public void Commit(ReadOnlySpan<int> tokens, ReadOnlySpan<float> hidden)
    {
        if (tokens.Length == 0) return;
        DraftModelBase.CheckCommit(Round.Count, hidden.Length, tokens.Length, dim, Length, capacity);
        CommitRows(tokens, hidden);
    }

    public Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
        => tensor(ExpandToArray(tokens, positions, parents), [tokens.Length, vocabSize]);

    public void EndRound() => Round.Clear();

    public void Dispose() { }
}
