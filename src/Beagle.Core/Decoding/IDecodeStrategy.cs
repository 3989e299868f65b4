using Beagle.Models;

namespace Beagle.Decoding;

/// <summary>
/// How tokens are produced round by round: plainly (one target forward per token) or speculatively (draft, then
/// one verifying target forward per round). The <see cref="Generator"/> owns everything else (prefill, stopping,
/// streaming text, statistics), so the decode loop exists once.
/// </summary>
internal interface IDecodeStrategy : IDisposable
{
    /// <summary>
    /// Called once after prefill. prefill.Logits: [1, V] for the last prompt position; prefill.Hidden: [n, D].
    /// Returns the first new token (chosen from those logits).
    /// </summary>
    int Start(ForwardOutput prefill, IReadOnlyList<int> prompt);

    /// <summary>
    /// One round. <paramref name="pending"/> is the last emitted token, not yet in the target's cache. Returns at least
    /// one new token; the last one becomes the next pending token. Returns an empty array when the context is full.
    /// </summary>
    int[] Step(int pending);
}

/// <summary>Plain decoding: one target forward per token.</summary>
internal sealed class PlainStrategy(LlamaModel target, KvCache cache, Sampler sampler, GenerationStats stats) : IDecodeStrategy
{
    public int Start(ForwardOutput prefill, IReadOnlyList<int> prompt) => LogitsRow.Choose(prefill.Logits, 0, sampler);

    public int[] Step(int pending)
    {
        if (cache.Length + 1 > cache.Capacity) return [];
        var t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        using var o = target.Forward(cache, [pending], [cache.Length]);
        stats.TargetForwards++;
        int next = LogitsRow.Choose(o.Logits, 0, sampler);
        stats.VerifySeconds += System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds;
        return [next];
    }

    public void Dispose() { }
}

/// <summary>Reading rows of a logits tensor on the CPU side.</summary>
internal static class LogitsRow
{
    /// <summary>Copies row <paramref name="row"/> of logits [T, V] to a float array.</summary>
    public static float[] Read(TorchSharp.torch.Tensor logits, int row)
    {
        using var r = logits[row].cpu();
        return r.data<float>().ToArray();
    }

    /// <summary>Greedy argmax or a draw from the sampling distribution of one row.</summary>
    public static int Choose(TorchSharp.torch.Tensor logits, int row, Sampler sampler) => sampler.Next(Read(logits, row));
}
