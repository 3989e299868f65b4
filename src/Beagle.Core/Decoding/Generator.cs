using System.Diagnostics;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tokenization;

namespace Beagle.Decoding;

/// <summary>
/// The decode loop (the only one in the project): prefill, then rounds of the chosen strategy (plain or speculative),
/// with EOS, stop strings, token limits, UTF-8-safe streaming and cancellation handled here once. A round can serve
/// several generations with one target forward (<see cref="Round"/>; BeagleEngine batches concurrent requests so).
/// Not thread-safe: TorchSharp state is per thread; use a Generator from one thread at a time (see BeagleEngine).
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

    /// <summary>
    /// A generator over the same models with the same settings, for another thread: a generator is used from one thread
    /// at a time, while the models it reads can serve several (BeagleEngine's workers each hold a twin).
    /// </summary>
    internal Generator Twin() => new(Target, Tokenizer, Draft)
    {
        DefaultTreeBudget = DefaultTreeBudget, SpeculationPays = SpeculationPays,
        DefaultSamplingTreeBudget = DefaultSamplingTreeBudget, SamplingSpeculationPays = SamplingSpeculationPays,
        AcceptanceMutation = AcceptanceMutation,
    };

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
        var prompt = Validate(promptIds, options);
        return Run(prompt, options, stats ?? new GenerationStats(), cancellationToken);
    }

    /// <summary>Runs to the end and returns the whole completion.</summary>
    public GenerationResult Complete(string prompt, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        var stats = new GenerationStats();
        var text = new System.Text.StringBuilder(); var ids = new List<int>();
        foreach (var c in Generate(prompt, options, stats, cancellationToken)) { text.Append(c.Text); ids.AddRange(c.TokenIds); }
        return new GenerationResult(text.ToString(), ids.ToArray(), stats);
    }

    int[] Validate(IReadOnlyList<int> promptIds, GenerationOptions options)
    {
        options.Validate();
        if (promptIds.Count == 0) throw new ArgumentException("the prompt is empty: give at least one token (e.g. BOS)", nameof(promptIds));
        int ctx = Target.Config.MaxSeqLen;
        if (promptIds.Count >= ctx)
            throw new ArgumentException($"the prompt has {promptIds.Count} tokens but the model's context is {ctx}; shorten it to at most {ctx - 1} tokens", nameof(promptIds));
        foreach (var id in promptIds)
            if ((uint)id >= (uint)Target.Config.VocabSize) throw new ArgumentOutOfRangeException(nameof(promptIds), $"token id {id} is outside the vocabulary (size {Target.Config.VocabSize})");
        return promptIds.ToArray();
    }

    /// <summary>One generation alone: a batch of one through <see cref="Round"/>.</summary>
    IEnumerable<GenerationChunk> Run(int[] prompt, GenerationOptions o, GenerationStats stats, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        using var sequence = new DecodeSequence(this, prompt, o, stats);
        DecodeSequence[] batch = [sequence];
        while (true)
        {
            if (sequence.TakeChunk() is { } chunk) yield return chunk;
            if (sequence.Done) yield break;
            ct.ThrowIfCancellationRequested();
            Round(batch);
        }
    }

    /// <summary>
    /// Starts a generation of <paramref name="prompt"/> (validated like <see cref="Generate(string, GenerationOptions, GenerationStats?, CancellationToken)"/>)
    /// and runs its prefill: the returned sequence holds its first chunk and then advances with <see cref="Round"/>.
    /// The caller owns it (Dispose frees its draft session and returns its cache to the target for reuse).
    /// </summary>
    internal DecodeSequence Start(string prompt, GenerationOptions options, GenerationStats stats)
        => Start(Tokenizer.Encode(prompt, options.AddBos && Tokenizer.BosId >= 0), options, stats);

    internal DecodeSequence Start(IReadOnlyList<int> promptIds, GenerationOptions options, GenerationStats stats)
        => new(this, Validate(promptIds, options), options, stats);

    /// <summary>
    /// One decoding round for every sequence given (none of them done): each proposes its rows (a plain step's one
    /// token, a speculative round's draft tree), one target forward runs them all (<see cref="LlamaModel.ForwardBatch(IReadOnlyList{SequenceRows})"/>:
    /// the weights are read once for every sequence, and each sequence's logits are bit-identical to running it alone),
    /// then each accepts from its own rows and stores its chunk. A sequence alone is a batch of one, so batched and
    /// single generations run the same code and give the same tokens (with a seed, the same samples: each sequence
    /// has its own sampler).
    /// </summary>
    internal void Round(IReadOnlyList<DecodeSequence> sequences)
    {
        // The round's lists are reused (a Generator runs rounds on one thread, one at a time) and emptied after each
        // round so that they hold no finished sequence.
        var running = _running; var rows = _rows;
        int chains = 0;
        try
        {
            for (int i = 0; i < sequences.Count; i++)   // (not foreach: an interface enumerator is an allocation per round)
                if (sequences[i].Done) throw new InvalidOperationException("a finished sequence cannot run another round");
            // Sequences that draft a chain over sessions that can pair draft in lockstep, two steps per pass over the
            // draft's weights (DraftTree.BuildChains; a lone chain is a lockstep of one); each gets the chain it would
            // draft alone. The others (trees, drafts that cannot pair, plain steps) propose on their own.
            if (_chainOf.Length < sequences.Count) (_chainOf, _jobs) = (new int[sequences.Count], new DraftTree.ChainJob[sequences.Count]);
            for (int i = 0; i < sequences.Count; i++) _chainOf[i] = sequences[i].TryBeginChain(out _jobs[chains]) ? chains++ : -1;
            double chainSeconds = 0;
            if (chains > 0)
            {
                long t = Stopwatch.GetTimestamp();
                DraftTree.BuildChains(_jobs.AsSpan(0, chains));
                chainSeconds = Stopwatch.GetElapsedTime(t).TotalSeconds;
            }
            for (int i = 0; i < sequences.Count; i++)
            {
                var s = sequences[i];
                var r = _chainOf[i] >= 0 ? s.EndChain(_jobs[_chainOf[i]], chainSeconds) : s.Propose();
                if (r is { } x) { running.Add(s); rows.Add(x); }
            }
            if (rows.Count == 0) return;
            long t0 = Stopwatch.GetTimestamp();
            using var output = Target.ForwardBatch(rows);                        // logits [N, V], hidden [N, D]: the sequences' rows in order
            double forward = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            for (int i = 0, row = 0; i < running.Count; row += rows[i].Tokens.Length, i++)
                running[i].Finish(output, row, forward);
        }
        finally { running.Clear(); rows.Clear(); Array.Clear(_jobs, 0, chains); }
    }

    readonly List<DecodeSequence> _running = [];
    readonly List<SequenceRows> _rows = [];
    // The round's lockstep chains (grown to the widest batch) and, per sequence, its job's index or -1.
    DraftTree.ChainJob[] _jobs = [];
    int[] _chainOf = [];

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

    /// <summary>
    /// One generation's decoding state between rounds: its own KV cache, strategy (draft session), sampler (random
    /// source), streaming text decoder, stop strings and statistics. Created with its prefill done; each
    /// <see cref="Round"/> adds one chunk; EOS, stop strings, the token limit and a full context end it.
    /// Single-threaded: the thread that runs the rounds owns it.
    /// </summary>
    internal sealed class DecodeSequence : IDisposable
    {
        readonly GenerationOptions _o;
        readonly GenerationStats _stats;
        readonly LlamaModel _target;
        KvCache? _cache;            // rented from the target; returned on Dispose
        readonly IDecodeStrategy? _strategy;
        readonly StreamingDecoder? _decoder;
        readonly StopStringMatcher? _stops;
        readonly IReadOnlyList<int> _eos;
        readonly long _tDecode;
        int _pending;               // the last emitted token, not yet in the cache
        bool _first = true;
        GenerationChunk? _chunk;    // what the last step produced, until taken

        public bool Done { get; private set; }
        public GenerationStats Stats => _stats;

        internal DecodeSequence(Generator g, int[] prompt, GenerationOptions o, GenerationStats stats)
        {
            (_o, _stats, _eos, _target) = (o, stats, g.Target.Config.EosIds, g.Target);
            stats.PromptTokens = prompt.Length;
            if (o.MaxNewTokens == 0) { stats.FinishReason = FinishReason.Length; Done = true; return; }
            var sampler = new Sampler(o.Sampling);
            // The clock starts before the cache and the draft session are set up: they are part of what a request costs,
            // and a draft session's buffers are part of what speculation costs (GenerationStats.TokensPerSecond).
            long t0 = Stopwatch.GetTimestamp();
            try
            {
                _cache = g.Target.RentCache();
                _strategy = g.CreateStrategy(_cache, sampler, stats, o);
                _decoder = new StreamingDecoder(g.Tokenizer, prompt[^1]);
                _stops = new StopStringMatcher(o.StopStrings);
                int first;
                using (var pre = g.Target.Forward(_cache, prompt, Enumerable.Range(0, prompt.Length).ToArray(), lastLogitsOnly: true))
                    first = _strategy.Start(pre, prompt);
                stats.PrefillSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                _tDecode = Stopwatch.GetTimestamp();
                Emit([first]);
            }
            catch { Dispose(); throw; }
        }

        /// <summary>The chunk of the last step (prefill or round), once; null when it produced neither tokens nor text.</summary>
        public GenerationChunk? TakeChunk() { var c = _chunk; _chunk = null; return c; }

        /// <summary>Sets up this round's draft as a lockstep chain (<see cref="SpeculativeStrategy.TryBeginChain"/>); false: use <see cref="Propose"/>.</summary>
        internal bool TryBeginChain(out DraftTree.ChainJob job)
        {
            job = default;
            return _strategy is SpeculativeStrategy s && s.TryBeginChain(_pending, out job);
        }

        /// <summary>This round's rows once its lockstep chain is built (<see cref="SpeculativeStrategy.EndChain"/>).</summary>
        internal SequenceRows EndChain(in DraftTree.ChainJob job, double draftSeconds) => ((SpeculativeStrategy)_strategy!).EndChain(job, draftSeconds);

        internal SequenceRows? Propose()
        {
            var rows = _strategy!.Propose(_pending);
            if (rows is null)
            {
                _stats.FinishReason = FinishReason.ContextFull;
                var tail = _text.Clear();
                _stops!.End(_decoder!.Flush(), tail);
                _stats.DecodeSeconds = Stopwatch.GetElapsedTime(_tDecode).TotalSeconds;
                _chunk = tail.Length > 0 ? new GenerationChunk([], tail.ToString()) : null;
                Done = true;
            }
            return rows;
        }

        internal void Finish(ForwardOutput output, int row, double forwardSeconds)
        {
            _stats.VerifySeconds += forwardSeconds;
            Emit(_strategy!.Finish(output, row));
        }

        /// <summary>Takes a step's tokens up to EOS, a stop string or the token limit, and makes their chunk.</summary>
        /// <remarks>The chunk (its token array and text) is what this allocates: the text is gathered in a reused builder.</remarks>
        void Emit(ReadOnlySpan<int> tokens)
        {
            var text = _text.Clear();
            int emitted = 0;
            int consumed = 0;   // tokens of this step the output reached: the emitted ones, and the EOS that ended it
            foreach (var tok in tokens)
            {
                consumed++;
                if (_eos.Contains(tok)) { _stats.FinishReason = FinishReason.EndOfSequence; Done = true; break; }
                emitted++;
                _stats.NewTokens++;
                _stops!.Push(_decoder!.Append(tok, ref _chars), text);
                if (_stops.Stopped) { _stats.FinishReason = FinishReason.StopString; Done = true; break; }
                if (_stats.NewTokens >= _o.MaxNewTokens) { _stats.FinishReason = FinishReason.Length; Done = true; break; }
            }
            // A round cut by the token limit, EOS or a stop string verified tokens nobody receives: they do not count
            // towards the acceptance length (a plain step that produces EOS still counts its one token).
            if (!_first) _stats.RoundTokens += consumed;
            _first = false;
            if (Done && _stats.FinishReason != FinishReason.StopString) _stops!.End(_decoder!.Flush(), text);
            _stats.DecodeSeconds = Stopwatch.GetElapsedTime(_tDecode).TotalSeconds;
            _chunk = emitted > 0 || text.Length > 0 ? new GenerationChunk(tokens[..emitted].ToArray(), text.ToString()) : null;
            _pending = tokens[^1];
        }

        readonly System.Text.StringBuilder _text = new();   // a step's text until its chunk is made
        char[] _chars = [];                                 // the decoder's output of one token

        public void Dispose()
        {
            _strategy?.Dispose();
            // Once only: a cache returned twice would be handed to two generations.
            if (Interlocked.Exchange(ref _cache, null) is { } cache) _target.ReturnCache(cache);
        }
    }
}
