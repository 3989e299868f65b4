using static TorchSharp.torch;

namespace Beagle.Models;

/// <summary>What one target forward returns. Both tensors are owned by the caller (outside the forward's dispose scope).</summary>
/// <param name="Logits">[T, V] (or [1, V] when only the last row was asked for).</param>
/// <param name="Hidden">[T, D]: the top hidden state of every position, i.e. the LM head's input (after the final norm).</param>
public sealed record ForwardOutput(Tensor Logits, Tensor Hidden) : IDisposable
{
    public void Dispose() { Logits.Dispose(); Hidden.Dispose(); }
}

/// <summary>One sequence's new rows in a batched forward (<see cref="LlamaModel.ForwardBatch(IReadOnlyList{SequenceRows})"/>).</summary>
/// <param name="Cache">The sequence's own cache; its rows go to slots [Cache.Length, Cache.Length + T).</param>
/// <param name="Tokens">T token ids.</param>
/// <param name="Positions">T rotary positions (a chain: Length..Length+T-1; a tree: Length + depth).</param>
/// <param name="Parents">null: the rows are a chain (causal). Else T parent rows of a tree (-1 for row 0, every other
/// row's parent an earlier row): a row sees the cached slots, its ancestors and itself.</param>
public readonly record struct SequenceRows(KvCache Cache, int[] Tokens, int[] Positions, int[]? Parents = null);

/// <summary>
/// How a <see cref="LlamaModel"/> runs: the target forward, chosen once when the model is built, by device
/// (<c>Compute/CpuTargetForward</c>: packed products and C# attention on the CPU; <see cref="TorchTargetForward"/>:
/// libtorch ops on any other device). An implementation owns the weights in the form its kernels read (folded, packed
/// or transposed); the model keeps the config and the tensors drafts and trainers share (embedding, LM head, final
/// norm). A new backend is one more implementation and one more line where the model picks it.
///
/// The arguments arrive validated by <see cref="LlamaModel"/> (token ids in the vocabulary, positions in the context,
/// masks and parents well formed, distinct caches); an implementation reserves the cache slots it writes
/// (<see cref="KvCache.Advance"/>). Masks are host-side: a forward of one sequence takes a [T, Length + T] row-major
/// bool array (true = may attend), a batched forward each sequence's tree parents; a backend turns them into what its
/// attention reads (the C# attention's list of hidden slots, libtorch's additive mask) once per forward.
/// </summary>
internal interface ITargetForward : IDisposable
{
    /// <summary>T new tokens of one sequence, written at cache slots [Length, Length + T).</summary>
    /// <param name="allowed">[T, Length + T] row-major, true = may attend; null = causal (and the sliding window, if any).</param>
    /// <param name="lastLogitsOnly">Logits of the last row only ([1, V]); Hidden still covers all T rows.</param>
    /// <returns>Logits [T or 1, V], hidden [T, D], owned by the caller.</returns>
    ForwardOutput Forward(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, bool[]? allowed, bool lastLogitsOnly);

    /// <summary>New rows of several sequences, each into its own cache; every row's results bit-identical to its sequence run alone.</summary>
    /// <returns>Logits [ΣT_b, V], hidden [ΣT_b, D], sequence b's rows after those of 0..b-1, owned by the caller.</returns>
    ForwardOutput ForwardBatch(IReadOnlyList<SequenceRows> sequences);

    /// <summary>Causal top hidden states without a cache, for training: tokens [B, T] int64 → [B, T, D], owned by the caller.</summary>
    Tensor HiddenStates(Tensor tokens);

    /// <summary>Logits through the frozen LM head: hidden [..., D] → [..., V] (autograd flows to hidden, not to the head).</summary>
    Tensor Logits(Tensor hidden);
}
