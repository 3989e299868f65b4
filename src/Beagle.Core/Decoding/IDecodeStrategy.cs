using Beagle.Models;

namespace Beagle.Decoding;

/// <summary>
/// How tokens are produced round by round: plainly (one target forward per token) or speculatively (draft, then
/// one verifying target forward per round). A round is split in two around the target forward so that one forward
/// can serve several sequences (<see cref="Generator.Round"/>): <see cref="Propose"/> says which rows this sequence
/// verifies, <see cref="Finish"/> reads its rows of the forward's output. The <see cref="Generator"/> owns everything
/// else (prefill, the forward, stopping, streaming text, statistics), so the decode loop exists once.
/// </summary>
internal interface IDecodeStrategy : IDisposable
{
    /// <summary>
    /// Called once after prefill. prefill.Logits: [1, V] for the last prompt position; prefill.Hidden: [n, D].
    /// Returns the first new token (chosen from those logits).
    /// </summary>
    int Start(ForwardOutput prefill, IReadOnlyList<int> prompt);

    /// <summary>
    /// The first half of a round. <paramref name="pending"/> is the last emitted token, not yet in the target's cache.
    /// Returns the rows to run through the target this round (the pending token first), or null when the context is
    /// full. Exactly one <see cref="Finish"/> follows each non-null proposal, after the forward. The rows view the
    /// strategy's own buffers (reused every round): they stay unchanged until that Finish.
    /// </summary>
    SequenceRows? Propose(int pending);

    /// <summary>
    /// The second half: <paramref name="output"/> holds this sequence's rows (as proposed) at rows
    /// [<paramref name="row"/>, row + T) of its logits [N, V] and hidden states [N, D] (other sequences' rows around them;
    /// the caller owns the output). Returns at least one new token; the last one becomes the next pending token. The
    /// span is the strategy's own buffer, valid until its next Propose (copy what must outlive the round).
    /// </summary>
    ReadOnlySpan<int> Finish(ForwardOutput output, int row);
}

/// <summary>Plain decoding: one target forward per token.</summary>
internal sealed class PlainStrategy(LlamaModel target, KvCache cache, Sampler sampler, GenerationStats stats) : IDecodeStrategy
{
    // The round's row and its result, reused every round (what Propose and Finish hand out views).
    readonly int[] _token = new int[1], _position = new int[1], _next = new int[1];

    public int Start(ForwardOutput prefill, IReadOnlyList<int> prompt) => LogitsRow.Choose(prefill, 0, target.Config.VocabSize, sampler);

    public SequenceRows? Propose(int pending)
    {
        if (cache.Length + 1 > cache.Capacity) return null;
        (_token[0], _position[0]) = (pending, cache.Length);
        return new SequenceRows(cache, _token, _position);
    }

    public ReadOnlySpan<int> Finish(ForwardOutput output, int row)
    {
        stats.TargetForwards++;
        _next[0] = LogitsRow.Choose(output, row, target.Config.VocabSize, sampler);
        return _next;
    }

    public void Dispose() { }
}

/// <summary>Reading rows of a forward's logits on the CPU side.</summary>
internal static class LogitsRow
{
    /// <summary>Greedy argmax or a draw from the sampling distribution of one row of the logits [T, V].</summary>
    /// <param name="vocab">V, from the model's config (reading a tensor's shape costs ~1 µs).</param>
    public static int Choose(ForwardOutput output, int row, int vocab, Sampler sampler)
    {
        var logits = output.HostLogits;
        if ((row + 1) * vocab > logits.Length) throw new ArgumentException($"logits have {logits.Length} values, fewer than {row + 1} rows of {vocab}", nameof(output));
        return sampler.Next(logits.Slice(row * vocab, vocab));
    }
}

/// <summary>
/// The float32 values of a tensor as a span, without a copy when the tensor already is contiguous float32 on the CPU
/// (the common case: a forward's logits or hidden states), so reading a few rows costs no tensor ops (each ~1-3 µs at
/// this model size). Otherwise a contiguous CPU copy is made and freed on Dispose. The span is valid until Dispose and
/// while the source tensor lives.
/// </summary>
internal readonly struct HostFloats : IDisposable
{
    readonly TorchSharp.torch.Tensor _source;
    readonly TorchSharp.torch.Tensor? _copy;

    HostFloats(TorchSharp.torch.Tensor source, TorchSharp.torch.Tensor? copy) { _source = source; _copy = copy; }

    public static HostFloats Of(TorchSharp.torch.Tensor t)
        => t.device_type == TorchSharp.DeviceType.CPU && t.dtype == TorchSharp.torch.ScalarType.Float32 && t.is_contiguous()
            ? new HostFloats(t, null)
            : new HostFloats(t, Copy(t));

    /// <summary>
    /// A contiguous float32 CPU copy. In a dispose scope: the chain's temporaries are otherwise unreferenced while the
    /// next native call runs, and a garbage collection could finalise (free) one mid-call.
    /// </summary>
    static TorchSharp.torch.Tensor Copy(TorchSharp.torch.Tensor t)
    {
        using var scope = TorchSharp.torch.NewDisposeScope();
        return t.detach().to(TorchSharp.torch.ScalarType.Float32).cpu().contiguous().MoveToOuterDisposeScope();
    }

    public ReadOnlySpan<float> Span => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>((_copy ?? _source).bytes);

    public void Dispose() => _copy?.Dispose();
}
