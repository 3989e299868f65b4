using System.Diagnostics;
using Beagle.Drafting;
using Beagle.Models;
using static TorchSharp.torch;

namespace Beagle.Decoding;

/// <summary>
/// What speculation costs on this machine for one target and draft, independent of how well the draft predicts: a
/// plain decoding step, and a whole speculative round over a chain of T tokens, all at the same context length. A round
/// is timed as the engine runs it (<see cref="SpeculativeStrategy"/>), in three parts: drafting (DraftTree.Build of the
/// chain: T − 1 draft steps and the tree's own bookkeeping), the verifying forward, and the bookkeeping after it (the
/// target's choice on every row, acceptance, KV compaction with KvCache.KeepSlots, and committing the accepted tokens'
/// states to the draft), with every draft token accepted, the costliest case. A round of T tokens costs
/// <see cref="RoundInPlainSteps"/> plain steps, so it breaks even at that acceptance length and reaches 2x at twice it.
/// This answers "can speculation pay for this pair here at all?" without a trained draft (costs do not depend on weights).
/// </summary>
/// <param name="Context">Committed context length at which everything was timed.</param>
/// <param name="PlainMs">One plain decoding step (a one-token forward and the choice of the next token), median ms.</param>
/// <param name="DraftStepMs">One draft expansion of one node, median ms (0 when no draft was timed).</param>
/// <param name="DraftMs">Building a chain of T tokens with the draft, median ms, by T (0 without a draft).</param>
/// <param name="VerifyMs">The target forward that verifies the chain of T tokens, median ms, by T.</param>
/// <param name="BookkeepingMs">Everything a round does after its verifying forward, median ms, by T.</param>
public sealed record SpeculativeCosts(int Context, double PlainMs, double DraftStepMs,
    IReadOnlyDictionary<int, double> DraftMs, IReadOnlyDictionary<int, double> VerifyMs, IReadOnlyDictionary<int, double> BookkeepingMs)
{
    static readonly TimeSpan WarmUp = TimeSpan.FromSeconds(1.5);

    /// <summary>A whole round over a chain of <paramref name="tokens"/> tokens (root included), ms.</summary>
    public double RoundMs(int tokens)
    {
        if (!VerifyMs.TryGetValue(tokens, out var verify) || !DraftMs.TryGetValue(tokens, out var draft) || !BookkeepingMs.TryGetValue(tokens, out var book))
            throw new ArgumentException($"no round of {tokens} tokens was timed", nameof(tokens));
        return draft + verify + book;
    }

    /// <summary>A round over a chain of <paramref name="tokens"/> tokens (root included), in plain steps.</summary>
    public double RoundInPlainSteps(int tokens) => RoundMs(tokens) / PlainMs;

    /// <summary>
    /// Times plain steps, draft steps and rounds (median of <paramref name="runs"/> interleaved runs of a few repetitions
    /// each). Tokens are random ids: costs do not depend on them.
    /// </summary>
    public static SpeculativeCosts Measure(LlamaModel target, IDraftModel? draft, IReadOnlyList<int> tokenCounts, int context = 80, int runs = 7,
        Action<string>? progress = null, CancellationToken cancellationToken = default)
    {
        int vocab = target.Config.VocabSize, maxT = tokenCounts.Count == 0 ? 1 : tokenCounts.Max();
        if (tokenCounts.Any(t => t < 2)) throw new ArgumentOutOfRangeException(nameof(tokenCounts), "a round verifies at least 2 tokens (the pending one and a draft token)");
        if (context < 1 || context + maxT + 1 > target.Config.MaxSeqLen)
            throw new ArgumentOutOfRangeException(nameof(context), $"context {context} plus {maxT} verified tokens must fit the model's {target.Config.MaxSeqLen} positions");
        if (runs < 1) throw new ArgumentOutOfRangeException(nameof(runs), "runs must be >= 1");
        var rng = new Random(1);
        int[] Random(int n) => Enumerable.Range(0, n).Select(_ => rng.Next(1, vocab)).ToArray();
        var prompt = Random(context);
        int pending = Random(1)[0];
        using var cache = target.NewCache(Math.Min(target.Config.MaxSeqLen, context + maxT + 1));
        using var prefill = target.Forward(cache, prompt, Enumerable.Range(0, context).ToArray());   // hidden [context, D]
        var sampler = new Sampler(SamplingOptions.Greedy);

        var counts = tokenCounts.Distinct().OrderBy(t => t).ToArray();
        var plain = new List<double>(); var drafting = new List<double>();
        var draftMs = counts.ToDictionary(t => t, _ => new List<double>());
        var verifyMs = counts.ToDictionary(t => t, _ => new List<double>());
        var bookMs = counts.ToDictionary(t => t, _ => new List<double>());
        using var stepSession = draft?.StartSession(cache.Capacity);
        stepSession?.Commit(prompt, prefill.Hidden);
        // Repetitions per timing: enough for ~a few ms per sample at small sizes, one at large ones.
        int reps = Math.Max(1, (int)Math.Min(50, 5e6 / ((double)target.Config.Dim * target.Config.Dim * target.Config.Layers)));
        // Warm-up, not recorded: at least one pass and ~1.5 s, so that .NET has promoted the hot methods to optimised
        // code (tier-0 code timed ~1.7x slower here, as in calibration).
        var warm = Stopwatch.StartNew();
        for (int r = -1; r < runs; r++)
        {
            bool record = r >= 0;
            if (!record && warm.Elapsed < WarmUp) r--;   // stay in warm-up
            cancellationToken.ThrowIfCancellationRequested();
            long plainTicks = 0;
            for (int i = 0; i < reps; i++)
            {
                cache.Rewind(context);
                long t0 = Stopwatch.GetTimestamp();
                using (var o = target.Forward(cache, [pending], [context])) LogitsRow.Choose(o, 0, vocab, sampler);
                plainTicks += Stopwatch.GetTimestamp() - t0;
            }
            if (record) plain.Add(Ms(plainTicks) / reps);
            foreach (var t in counts)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var (d, v, b) = TimeRounds(target, draft, cache, prompt, prefill.Hidden, pending, t, reps, sampler, Random);
                if (record) { draftMs[t].Add(d); verifyMs[t].Add(v); bookMs[t].Add(b); }
            }
            if (stepSession is not null)
            {
                long t0 = Stopwatch.GetTimestamp();
                for (int i = 0; i < reps; i++)
                {
                    if (stepSession.ArrayPath is { } fast) fast.ExpandToBuffer([pending], [context], [-1]);
                    else stepSession.Expand([pending], [context], [-1]).Dispose();
                    stepSession.EndRound();
                }
                if (record) drafting.Add(Ms(Stopwatch.GetTimestamp() - t0) / reps);
            }
            progress?.Invoke(record ? $"run {r + 1}/{runs}" : "warming up");
        }
        static IReadOnlyDictionary<int, double> Medians(Dictionary<int, List<double>> d) => d.ToDictionary(kv => kv.Key, kv => SpeculativeBenchmark.Median(kv.Value));
        return new SpeculativeCosts(context, SpeculativeBenchmark.Median(plain), drafting.Count == 0 ? 0 : SpeculativeBenchmark.Median(drafting),
            Medians(draftMs), Medians(verifyMs), Medians(bookMs));
    }

    static double Ms(long ticks) => ticks * 1000.0 / Stopwatch.Frequency;

    /// <summary>
    /// <paramref name="reps"/> rounds over a chain of <paramref name="tokens"/> tokens, each as a speculative round (<see cref="SpeculativeStrategy.Propose"/>, <see cref="SpeculativeStrategy.Finish"/>)
    /// runs it with the whole chain accepted; returns the mean ms of its drafting, verifying forward and bookkeeping.
    /// Each round starts from the same state (cache at the context, a draft session with the prompt committed), set up untimed.
    /// </summary>
    static (double Draft, double Verify, double Bookkeeping) TimeRounds(LlamaModel target, IDraftModel? draft, KvCache cache, int[] prompt,
        Tensor promptHidden, int pending, int tokens, int reps, Sampler sampler, Func<int, int[]> random)
    {
        int n = prompt.Length, vocab = target.Config.VocabSize, dim = target.Config.Dim;
        long draftTicks = 0, verifyTicks = 0, bookTicks = 0;
        for (int i = 0; i < reps; i++)
        {
            // Untimed: a round's Commit advances the session, so each round gets a fresh one; without a draft, a chain of random tokens.
            using var session = draft?.StartSession(cache.Capacity);
            session?.Commit(prompt, promptHidden);
            cache.Rewind(n);
            var chain = session is null ? DraftTree.FromArrays([pending, .. random(tokens - 1)], [-1, .. Enumerable.Range(0, tokens - 1)], [.. Enumerable.Range(0, tokens)]) : null;

            long t0 = Stopwatch.GetTimestamp();
            var tree = chain ?? Build(session!, draft!, pending, n, tokens);
            long t1 = Stopwatch.GetTimestamp();
            using var scope = NewDisposeScope();
            using var o = target.ForwardBatch([new SequenceRows(cache, tree.TokenBuffer, tree.Positions(n), tree.IsChain ? null : tree.ParentBuffer, tree.Count)]);   // logits [T, V], hidden [T, D]
            long t2 = Stopwatch.GetTimestamp();
            // The target's choice after every node (read in place, as the strategy does); acceptance then takes the whole
            // chain (the chain's own tokens stand in for those choices), so the KV compaction and the draft's commit do
            // the most work a round of this length can give them.
            var accept = new long[tree.Count];
            var logits = o.HostLogits;
            for (int r = 0; r < tree.Count; r++) accept[r] = sampler.Next(logits.Slice(r * vocab, vocab));
            for (int r = 0; r + 1 < tree.Count; r++) accept[r] = tree.Tokens[r + 1];
            var (path, _) = Verifier.AcceptGreedy(tree, accept);
            cache.KeepSlots(n, path.Select(p => (long)(n + p)).ToArray());
            var pathTokens = path.Select(p => tree.Tokens[p]).ToArray();
            if (session?.ArrayPath is { } managed)
            {
                var hidden = o.HostHidden;
                var rows = new float[path.Count * dim];
                for (int r = 0; r < path.Count; r++) hidden.Slice(path[r] * dim, dim).CopyTo(rows.AsSpan(r * dim, dim));
                managed.Commit(pathTokens, rows);
            }
            else session?.Commit(pathTokens, o.Hidden.index_select(0, tensor(path.Select(p => (long)p).ToArray(), device: target.Device)));
            long t3 = Stopwatch.GetTimestamp();
            if (session is not null) draftTicks += t1 - t0;   // without a draft nothing was drafted
            verifyTicks += t2 - t1; bookTicks += t3 - t2;
        }
        return (Ms(draftTicks) / reps, Ms(verifyTicks) / reps, Ms(bookTicks) / reps);
    }

    /// <summary>A chain of <paramref name="tokens"/> tokens drafted from <paramref name="pending"/>, as a round drafts it.</summary>
    static DraftTree Build(IDraftSession session, IDraftModel draft, int pending, int position, int tokens)
    {
        int steps = 0;
        var tree = DraftTree.Build(session, draft.DraftToTarget, pending, position, tokens, tokens - 1, 1, ref steps);
        session.EndRound();
        return tree;
    }
}
