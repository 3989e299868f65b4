using System.Diagnostics;
using Beagle.Drafting;
using Beagle.Models;
using static TorchSharp.torch;

namespace Beagle.Decoding;

/// <summary>
/// What speculation costs on this machine for one target and draft, independent of how well the draft predicts:
/// a plain decoding step, a verification forward of T tokens, and one draft step, all at the same context length.
/// From these, a chain of T verified tokens (T − 1 draft steps) costs <see cref="RoundInPlainSteps"/> plain steps, so it
/// breaks even at that acceptance length and reaches 2x at twice it. This is the question "can speculation pay for this
/// pair here at all?" answered without a trained draft (the costs do not depend on the weights).
/// </summary>
/// <param name="Context">Committed context length at which everything was timed.</param>
/// <param name="PlainMs">One-token forward (a plain decoding step), median ms.</param>
/// <param name="VerifyMs">Forward of T chained tokens, median ms, by T.</param>
/// <param name="DraftStepMs">One draft expansion of one node, median ms (0 when no draft was timed).</param>
public sealed record SpeculativeCosts(int Context, double PlainMs, IReadOnlyDictionary<int, double> VerifyMs, double DraftStepMs)
{
    static readonly TimeSpan WarmUp = TimeSpan.FromSeconds(1.5);

    /// <summary>A round that verifies a chain of <paramref name="tokens"/> tokens (root included), in plain steps.</summary>
    public double RoundInPlainSteps(int tokens)
    {
        if (!VerifyMs.TryGetValue(tokens, out var verify)) throw new ArgumentException($"no verification of {tokens} tokens was timed", nameof(tokens));
        return (verify + (tokens - 1) * DraftStepMs) / PlainMs;
    }

    /// <summary>
    /// Times the forwards and draft steps (median of <paramref name="runs"/> interleaved runs of a few repetitions each).
    /// Tokens are random ids: costs do not depend on them.
    /// </summary>
    public static SpeculativeCosts Measure(LlamaModel target, IDraftModel? draft, IReadOnlyList<int> tokenCounts, int context = 80, int runs = 7,
        Action<string>? progress = null, CancellationToken cancellationToken = default)
    {
        int vocab = target.Config.VocabSize, maxT = tokenCounts.Count == 0 ? 1 : tokenCounts.Max();
        if (tokenCounts.Any(t => t < 1)) throw new ArgumentOutOfRangeException(nameof(tokenCounts), "token counts must be >= 1");
        if (context < 1 || context + maxT + 1 > target.Config.MaxSeqLen)
            throw new ArgumentOutOfRangeException(nameof(context), $"context {context} plus {maxT} verified tokens must fit the model's {target.Config.MaxSeqLen} positions");
        if (runs < 1) throw new ArgumentOutOfRangeException(nameof(runs), "runs must be >= 1");
        var rng = new Random(1);
        int[] Random(int n) => Enumerable.Range(0, n).Select(_ => rng.Next(1, vocab)).ToArray();
        var prompt = Random(context);
        using var cache = target.NewCache(Math.Min(target.Config.MaxSeqLen, context + maxT + 1));
        using var prefill = target.Forward(cache, prompt, Enumerable.Range(0, context).ToArray());

        var counts = tokenCounts.Append(1).Distinct().OrderBy(t => t).ToArray();
        var forward = counts.ToDictionary(t => t, _ => new List<double>());
        var drafting = new List<double>();
        using var session = draft?.StartSession(cache.Capacity);
        session?.Commit(prompt, prefill.Hidden);
        // Repetitions per timing: enough for ~a few ms per sample at small sizes, one at large ones.
        int reps = Math.Max(1, (int)Math.Min(50, 5e6 / ((double)target.Config.Dim * target.Config.Dim * target.Config.Layers)));
        // Warm-up, not recorded: at least one pass and ~1.5 s, so that .NET has promoted the hot methods to optimised
        // code (tier-0 code timed ~1.7x slower here, as in calibration).
        var warm = Stopwatch.StartNew();
        for (int r = -1; r < runs; r++)
        {
            bool record = r >= 0;
            if (!record && warm.Elapsed < WarmUp) r--;   // stay in warm-up
            foreach (var t in counts)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var toks = Random(t); var pos = Enumerable.Range(context, t).ToArray();
                long t0 = Stopwatch.GetTimestamp();
                for (int i = 0; i < reps; i++) { using var o = target.Forward(cache, toks, pos); cache.Rewind(context); }
                if (record) forward[t].Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds / reps);
            }
            if (session is not null)
            {
                long t0 = Stopwatch.GetTimestamp();
                for (int i = 0; i < reps; i++)
                {
                    if (session is IArrayDraftSession fast) fast.ExpandToBuffer([prompt[^1]], [context], [-1]);
                    else session.Expand([prompt[^1]], [context], [-1]).Dispose();
                    session.EndRound();
                }
                if (record) drafting.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds / reps);
            }
            progress?.Invoke(record ? $"run {r + 1}/{runs}" : "warming up");
        }
        var verify = counts.ToDictionary(t => t, t => SpeculativeBenchmark.Median(forward[t]));
        return new SpeculativeCosts(context, verify[1], verify, drafting.Count == 0 ? 0 : SpeculativeBenchmark.Median(drafting));
    }
}
