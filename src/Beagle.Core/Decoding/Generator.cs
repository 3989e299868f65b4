using System.Diagnostics;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tokenization;

namespace Beagle.Decoding;

/// <summary>
/// The decode loop (the only one in the project): prefill, then rounds of the chosen strategy (plain or speculative),
/// with EOS, stop strings, token limits, UTF-8-safe streaming and cancellation handled here once.
/// Not thread-safe: TorchSharp state is per thread; run one generation at a time per Generator (see BeagleEngine).
/// </summary>
public sealed class Generator(LlamaModel target, ITokenizer tokenizer, IDraftModel? draft = null)
{
    public LlamaModel Target { get; } = target;
    public ITokenizer Tokenizer { get; } = tokenizer;
    public IDraftModel? Draft { get; } = draft;

    /// <summary>
    /// Tree budget used for any field a request's <see cref="SpeculativeOptions"/> leaves null (combined as
    /// <see cref="TreeBudgetOptions.Over"/> says). Set it from <see cref="TreeBudgetCalibrator"/> (ModelLoader.Calibrate
    /// does, for every face that calibrates) — the built-in default is only a starting point.
    /// </summary>
    public TreeBudget DefaultTreeBudget { get; set; } = TreeBudget.Default;

    /// <summary>
    /// False when calibration found that drafting does not pay on this machine: requests that leave the whole budget
    /// to the default are then decoded plainly (never slower than plain decoding). An explicit budget is honoured.
    /// </summary>
    public bool SpeculationPays { get; set; } = true;

    /// <summary>Tree budget for sampled requests that leave the budget to the default (null = <see cref="DefaultTreeBudget"/>).</summary>
    public TreeBudget? DefaultSamplingTreeBudget { get; set; }

    /// <summary>
    /// False when calibration found that drafting does not pay for sampled decoding here (acceptance under sampling is
    /// lower than greedy): sampled requests that leave the budget to the default then decode plainly.
    /// </summary>
    public bool SamplingSpeculationPays { get; set; } = true;

    /// <summary>A deliberately broken sampling acceptance rule for speculative rounds (tests of the tests; never set otherwise).</summary>
    internal AcceptanceMutation AcceptanceMutation { get; init; }

    /// <summary>Applies a calibration result for greedy requests.</summary>
    public void Use(CalibratedBudget budget) { DefaultTreeBudget = budget.Budget; SpeculationPays = !budget.UsePlain; }

    /// <summary>Applies a calibration result measured with sampling (see TreeBudgetCalibrator.ChatSampling) to sampled requests.</summary>
    public void UseForSampling(CalibratedBudget budget) { DefaultSamplingTreeBudget = budget.Budget; SamplingSpeculationPays = !budget.UsePlain; }

    /// <summary>Encodes <paramref name="prompt"/> and streams the completion.</summary>
    public IEnumerable<GenerationChunk> Generate(string prompt, GenerationOptions options, GenerationStats? stats = null, CancellationToken cancellationToken = default)
        => Generate(Tokenizer.Encode(prompt, options.AddBos && Tokenizer.BosId >= 0), options, stats, cancellationToken);

    /// <summary>Streams the completion of <paramref name="promptIds"/>. Throws OperationCanceledException when cancelled.</summary>
    public IEnumerable<GenerationChunk> Generate(IReadOnlyList<int> promptIds, GenerationOptions options, GenerationStats? stats = null, CancellationToken cancellationToken = default)
    {
        options.Validate();
        if (promptIds.Count == 0) throw new ArgumentException("the prompt is empty: give at least one token (e.g. BOS)", nameof(promptIds));
        int ctx = Target.Config.MaxSeqLen;
        if (promptIds.Count >= ctx)
            throw new ArgumentException($"the prompt has {promptIds.Count} tokens but the model's context is {ctx}; shorten it to at most {ctx - 1} tokens", nameof(promptIds));
        foreach (var id in promptIds)
            if ((uint)id >= (uint)Target.Config.VocabSize) throw new ArgumentOutOfRangeException(nameof(promptIds), $"token id {id} is outside the vocabulary (size {Target.Config.VocabSize})");
        return Run(promptIds.ToArray(), options, stats ?? new GenerationStats(), cancellationToken);
    }

    /// <summary>Runs to the end and returns the whole completion.</summary>
    public GenerationResult Complete(string prompt, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        var stats = new GenerationStats();
        var text = new System.Text.StringBuilder(); var ids = new List<int>();
        foreach (var c in Generate(prompt, options, stats, cancellationToken)) { text.Append(c.Text); ids.AddRange(c.TokenIds); }
        return new GenerationResult(text.ToString(), ids.ToArray(), stats);
    }

    IEnumerable<GenerationChunk> Run(int[] prompt, GenerationOptions o, GenerationStats stats, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        stats.PromptTokens = prompt.Length;
        if (o.MaxNewTokens == 0) { stats.FinishReason = FinishReason.Length; yield break; }
        var eos = Target.Config.EosIds;
        var sampler = new Sampler(o.Sampling);
        // The clock starts before the cache and the draft session are set up: they are part of what a request costs,
        // and a draft session's buffers are part of what speculation costs (GenerationStats.TokensPerSecond).
        long t0 = Stopwatch.GetTimestamp();
        using var cache = Target.NewCache();
        using var strategy = CreateStrategy(cache, sampler, stats, o);
        var decoder = new StreamingDecoder(Tokenizer, prompt[^1]);
        var stops = new StopStringMatcher(o.StopStrings);

        int pending;
        using (var pre = Target.Forward(cache, prompt, Enumerable.Range(0, prompt.Length).ToArray(), lastLogitsOnly: true))
            pending = strategy.Start(pre, prompt);
        stats.PrefillSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        long tDecode = Stopwatch.GetTimestamp();

        int[] batch = [pending];
        bool first = true;
        while (true)
        {
            var emitted = new List<int>(batch.Length);
            string text = "";
            bool done = false;
            int consumed = 0;   // tokens of this batch the output reached: the emitted ones, and the EOS that ended it
            foreach (var tok in batch)
            {
                consumed++;
                if (eos.Contains(tok)) { stats.FinishReason = FinishReason.EndOfSequence; done = true; break; }
                emitted.Add(tok);
                stats.NewTokens++;
                text += stops.Push(decoder.Append(tok));
                if (stops.Stopped) { stats.FinishReason = FinishReason.StopString; done = true; break; }
                if (stats.NewTokens >= o.MaxNewTokens) { stats.FinishReason = FinishReason.Length; done = true; break; }
            }
            // A round cut by the token limit, EOS or a stop string verified tokens nobody receives: they do not count
            // towards the acceptance length (a plain step that produces EOS still counts its one token).
            if (!first) stats.RoundTokens += consumed;
            first = false;
            if (done && stats.FinishReason != FinishReason.StopString) text += stops.Push(decoder.Flush()) + stops.Flush();
            stats.DecodeSeconds = Stopwatch.GetElapsedTime(tDecode).TotalSeconds;
            if (emitted.Count > 0 || text.Length > 0) yield return new GenerationChunk(emitted.ToArray(), text);
            if (done) yield break;

            ct.ThrowIfCancellationRequested();
            batch = strategy.Step(batch[^1]);
            if (batch.Length == 0)
            {
                stats.FinishReason = FinishReason.ContextFull;
                var tail = stops.Push(decoder.Flush()) + stops.Flush();
                stats.DecodeSeconds = Stopwatch.GetElapsedTime(tDecode).TotalSeconds;
                if (tail.Length > 0) yield return new GenerationChunk([], tail);
                yield break;
            }
        }
    }

    IDecodeStrategy CreateStrategy(KvCache cache, Sampler sampler, GenerationStats stats, GenerationOptions o)
    {
        var s = o.Speculative;
        bool budgetLeftToDefault = s is { Tree.IsEmpty: true };
        bool greedy = o.Sampling.IsGreedy;
        bool pays = greedy ? SpeculationPays : SamplingSpeculationPays;
        if (Draft is null || s is null || s.Disabled || (budgetLeftToDefault && !pays)) return new PlainStrategy(Target, cache, sampler, stats);
        var fallback = greedy ? DefaultTreeBudget : DefaultSamplingTreeBudget ?? DefaultTreeBudget;
        return new SpeculativeStrategy(Target, Draft, cache, sampler, stats, s.Tree.Over(fallback, basisName: "this generator's budget (calibrated or default)"), s.ConcatDraftStates, AcceptanceMutation);
    }
}
