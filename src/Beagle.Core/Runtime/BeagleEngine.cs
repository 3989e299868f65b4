using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tokenization;

namespace Beagle.Runtime;

/// <summary>Engine settings. Validated when the engine is created.</summary>
public sealed record EngineOptions
{
    /// <summary>Requests that may wait for a place in the running batch; a full queue rejects new requests at once (no hang).</summary>
    public int QueueCapacity { get; init; } = 16;
    /// <summary>
    /// The most generations decoded together (continuous batching): each round, one target forward verifies the rows
    /// of every running generation, and waiting requests join between rounds while there is room. Each holds its own
    /// KV cache (and draft session) while it runs. 1 = one generation at a time. Outputs do not depend on it: a
    /// generation gives the same tokens batched as alone (greedy; sampled with a seed, the same samples).
    /// </summary>
    public int MaxBatchSize { get; init; } = 8;
    /// <summary>
    /// Decoding threads, each running its own batch (continuous batching within it); a new request joins the least
    /// loaded one, and <see cref="MaxBatchSize"/> bounds the generations of all of them together. One is right when a
    /// round is memory-bound (the weights read once serve every row). When verification is compute-bound — a small
    /// model on a CPU, where each verified row costs its own multiply-adds — a second core adds what batching on one
    /// cannot (docs/benchmarks.md, "Continuous batching"). The workers share the loaded weights (read-only); each
    /// generation still gives exactly the output it gives alone. At most <see cref="MaxBatchSize"/>.
    /// </summary>
    public int Workers { get; init; } = 1;
    /// <summary>
    /// With a draft: pick the tree budget by measurement at load (seconds, once per machine/model/draft; cached in the
    /// user cache), for greedy and for sampled requests separately (sampling measured at TreeBudgetCalibrator.ChatSampling),
    /// falling back to plain decoding where drafting does not pay. Off (default, so that loading stays fast and
    /// deterministic): the built-in default budget; the CLI calibrates on its own.
    /// </summary>
    public bool CalibrateTreeBudget { get; init; }
    /// <summary>Where calibrated budgets are cached; null = <see cref="BeaglePaths.TreeBudgetCacheFile"/>.</summary>
    public string? TreeBudgetCacheFile { get; init; }
    /// <summary>Intra-op threads for libtorch; null = leave as is. 1 is fastest for small models (docs/benchmarks.md).</summary>
    public int? Threads { get; init; }
    /// <summary>
    /// How long a stream's generation waits for its reader once <see cref="BeagleEngine.StreamBuffer"/> chunks are unread.
    /// While it waits, it sits out the batch's rounds (the other generations go on). A stream that is neither read,
    /// disposed nor cancelled for this long is abandoned: its generation stops, its place in the batch goes to the next
    /// request, and a reader that comes back gets a TimeoutException after the buffered chunks. (Not
    /// when its enumerator is garbage-collected: that may be never, and the engine must not depend on it.)
    /// Timeout.InfiniteTimeSpan turns it off.
    /// </summary>
    public TimeSpan StreamIdleTimeout { get; init; } = TimeSpan.FromSeconds(30);

    public EngineOptions Validate()
    {
        if (MaxBatchSize < 1) throw new ArgumentOutOfRangeException(nameof(MaxBatchSize), MaxBatchSize, "the batch size must be >= 1 (1 = one generation at a time)");
        if (QueueCapacity < 1) throw new ArgumentOutOfRangeException(nameof(QueueCapacity), QueueCapacity, "queue capacity must be >= 1");
        if (StreamIdleTimeout <= TimeSpan.Zero && StreamIdleTimeout != Timeout.InfiniteTimeSpan)
            throw new ArgumentOutOfRangeException(nameof(StreamIdleTimeout), StreamIdleTimeout, "the stream idle timeout must be positive (or Timeout.InfiniteTimeSpan)");
        if (Threads is { } t && t < 1) throw new ArgumentOutOfRangeException(nameof(Threads), t, "threads must be >= 1");
        if (Workers < 1 || Workers > MaxBatchSize)
            throw new ArgumentOutOfRangeException(nameof(Workers), Workers, $"workers must be between 1 and the batch size ({MaxBatchSize}): a worker decodes at least one generation");
        return this;
    }
}

/// <summary>What the engine serves: a target, its tokenizer and optionally a draft. Owned by the engine once given.</summary>
public sealed record EngineModels(LlamaModel Target, ITokenizer Tokenizer, IDraftModel? Draft = null) : IDisposable
{
    public void Dispose() { Draft?.Dispose(); Target.Dispose(); }
}

/// <summary>Thrown when the engine's request queue is full.</summary>
public sealed class EngineBusyException(int capacity)
    : InvalidOperationException($"the Beagle engine's request queue is full ({capacity} waiting); retry later or raise EngineOptions.QueueCapacity");

/// <summary>
/// Worker threads (<see cref="EngineOptions.Workers"/>, one by default) that share a loaded model and run generation
/// requests from one bounded queue, several at once: continuous batching. Each worker runs its own batch: between
/// rounds it admits waiting requests (while the engine holds fewer than <see cref="EngineOptions.MaxBatchSize"/>
/// generations and no other worker holds fewer than it does; each is prefilled on joining) and drops finished,
/// cancelled and abandoned ones (freeing their draft sessions; their caches go back to the model for reuse); each round, <see cref="Generator.Round"/>
/// verifies all of its generations' rows in one target forward. Each generation keeps its own cache, draft session and
/// random source, so its output is the one it would get alone, whichever worker runs it and whoever shares its rounds.
/// TorchSharp dispose scopes and no_grad are per thread, so a generation's tensor operations all happen on its worker;
/// the weights are only read. Callers only await results (architecture.md, "Threading"). Faces (chat client, SK
/// service, ML.NET, hosting, CLI) all generate through <see cref="Generator"/>, which they reach through this engine or
/// directly on one thread.
/// </summary>
public sealed class BeagleEngine : IAsyncDisposable, IDisposable
{
    readonly Channel<WorkItem> _queue;
    readonly Worker[] _workers;
    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly EngineOptions _options;
    readonly CancellationTokenSource _shutdown = new();
    EngineModels? _models;
    int _queued, _running, _batchSize, _largestBatch;
    // Completed (and replaced) whenever a worker's count of generations changes (one joins or leaves): a worker that may
    // not admit (the engine is full, or another worker holds fewer) waits on it too, since a change elsewhere can make
    // the next waiting request its to take.
    TaskCompletionSource _loadChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Starts the workers; the first loads the models (<paramref name="load"/> runs on it), the others then share them.</summary>
    public BeagleEngine(Func<EngineModels> load, EngineOptions? options = null)
    {
        _options = (options ?? new EngineOptions()).Validate();
        // Unbounded channel, bounded by count: a request cancelled while queued gives its place back at once (the channel
        // would keep a slot until the worker skipped the item).
        _queue = Channel.CreateUnbounded<WorkItem>(new UnboundedChannelOptions { SingleReader = _options.Workers == 1 });
        _workers = new Worker[_options.Workers];
        for (int i = 0; i < _workers.Length; i++)
        {
            var w = _workers[i] = new Worker();
            w.Thread = new Thread(i == 0 ? () => LeadLoop(w, load) : () => FollowLoop(w)) { IsBackground = true, Name = $"beagle-engine-{i}" };
        }
        foreach (var w in _workers) w.Thread.Start();
    }

    /// <summary>Completes when the models are loaded; faults with the loading error.</summary>
    public Task Ready => _ready.Task;

    /// <summary>The tokenizer (thread-safe for encoding and decoding). Available once <see cref="Ready"/> completed.</summary>
    public ITokenizer Tokenizer => Loaded.Tokenizer;
    public ModelConfig TargetConfig => Loaded.Target.Config;
    public IDraftModel? Draft => Loaded.Draft;
    /// <summary>Requests waiting or running.</summary>
    public int QueueDepth => Volatile.Read(ref _queued) + Volatile.Read(ref _running);
    /// <summary>Requests waiting for a place (at most <see cref="EngineOptions.QueueCapacity"/>; more are rejected).</summary>
    public int WaitingRequests => Volatile.Read(ref _queued);
    /// <summary>Generations in the running batches now (decoding, or paused for a slow reader); at most <see cref="MaxBatchSize"/>.</summary>
    public int BatchSize => Volatile.Read(ref _batchSize);
    /// <summary>The most generations decoded together (<see cref="EngineOptions.MaxBatchSize"/>), over all workers.</summary>
    public int MaxBatchSize => _options.MaxBatchSize;
    /// <summary>Decoding threads (<see cref="EngineOptions.Workers"/>).</summary>
    public int Workers => _workers.Length;
    /// <summary>The most generations that shared one round so far (tests: proof that requests were batched).</summary>
    internal int LargestBatch => Volatile.Read(ref _largestBatch);
    /// <summary>The generations each worker has admitted so far (tests: proof that the workers shared the requests).</summary>
    internal int[] WorkerAdmissions => Array.ConvertAll(_workers, w => Volatile.Read(ref w.Admitted));

    EngineModels Loaded => _models ?? throw new InvalidOperationException(Ready.IsFaulted ? $"the engine failed to load its model: {Ready.Exception!.InnerException!.Message}" : "the engine is still loading its model; await Ready first");

    /// <summary>One decoding thread: its generator (settings copied from the first worker's) and the streams it runs.</summary>
    sealed class Worker
    {
        public Thread Thread = null!;
        public Generator? Generator;
        /// <summary>Admitted streams: decoding, paused for their reader, or delivering their last chunk.</summary>
        public readonly List<StreamRun> Active = [];
        /// <summary>Generations this worker holds (written by it, read by the others when they choose who admits).</summary>
        public int Decoding;
        /// <summary>Generations this worker has admitted so far.</summary>
        public int Admitted;
    }

    /// <summary>The first worker: loads (and calibrates) the models, serves, and disposes them once every worker has stopped.</summary>
    void LeadLoop(Worker self, Func<EngineModels> load)
    {
        try
        {
            if (_options.Threads is { } t) TorchSharp.torch.set_num_threads(t);
            _models = load();
            var generator = self.Generator = new Generator(_models.Target, _models.Tokenizer, _models.Draft);
            if (_models.Draft is not null && _options.CalibrateTreeBudget)
            {
                ModelLoader.ApplyTreeBudget(generator, TreeBudgetOptions.None, calibrate: true, _options.TreeBudgetCacheFile);
                ModelLoader.ApplyTreeBudget(generator, TreeBudgetOptions.None, calibrate: true, _options.TreeBudgetCacheFile, TreeBudgetCalibrator.ChatSampling);
            }
            foreach (var w in _workers) w.Generator ??= generator.Twin();
            _ready.SetResult();
        }
        catch (Exception e) { _ready.SetException(e); return; }
        try { Serve(self); }
        finally
        {
            foreach (var w in _workers) if (w != self) w.Thread.Join();
            _models.Dispose();
        }
    }

    /// <summary>Every other worker: waits for the first to load the models, then serves.</summary>
    void FollowLoop(Worker self)
    {
        try { _ready.Task.GetAwaiter().GetResult(); }
        catch { return; }   // the first worker reports the loading error
        if (_options.Threads is { } t) TorchSharp.torch.set_num_threads(t);
        Serve(self);
    }

    void Serve(Worker self)
    {
        var reader = _queue.Reader;
        var active = self.Active;
        var runnable = new List<Generator.DecodeSequence>();
        try
        {
            while (true)
            {
                Service(self);
                bool open = Admit(self, reader);
                runnable.Clear();
                foreach (var r in active) if (r.Sequence is { } s && r.Unwritten is null) runnable.Add(s);
                if (runnable.Count > 0) { RunRound(self, runnable); continue; }
                if (active.Count == 0)
                {
                    if (!open) break;
                    // Idle: a request, or (while this worker may not admit) a change of load elsewhere, or shutdown.
                    var changed = Volatile.Read(ref _loadChanged).Task;
                    if (MayAdmit(self)) reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult();
                    else Task.WaitAny(changed, reader.Completion);
                    continue;
                }
                WaitForProgress(self, reader, open);
            }
        }
        finally
        {
            foreach (var r in active) End(self, r, new ObjectDisposedException(nameof(BeagleEngine)));
            active.Clear();
        }
    }

    /// <summary>Delivers held chunks whose reader made room; ends streams that were cancelled, disposed or left unread too long.</summary>
    void Service(Worker self)
    {
        var active = self.Active;
        for (int i = active.Count - 1; i >= 0; i--)
        {
            var r = active[i];
            if (r.Ct.IsCancellationRequested) { End(self, r, new OperationCanceledException(r.Ct)); active.RemoveAt(i); continue; }
            if (r.Unwritten is { } chunk)
            {
                if (r.Writer.TryWrite(chunk)) r.Unwritten = null;
                else if (_options.StreamIdleTimeout != Timeout.InfiniteTimeSpan && System.Diagnostics.Stopwatch.GetElapsedTime(r.BlockedSince) >= _options.StreamIdleTimeout)
                {
                    End(self, r, new TimeoutException($"the stream was not read for {_options.StreamIdleTimeout.TotalSeconds:0.###} s (EngineOptions.StreamIdleTimeout), " +
                        "so its generation was stopped to let other requests run; read a stream to its end, or dispose or cancel it"));
                    active.RemoveAt(i);
                    continue;
                }
            }
            if (r.Unwritten is null && r.Sequence is null) { End(self, r, null); active.RemoveAt(i); }   // finished and delivered
        }
    }

    /// <summary>
    /// Whether this worker may take a waiting request now: the engine holds fewer than MaxBatchSize generations, and no
    /// other worker holds fewer than this one (the least loaded admits, so that requests spread over the workers).
    /// </summary>
    bool MayAdmit(Worker self)
    {
        if (Volatile.Read(ref _batchSize) >= _options.MaxBatchSize) return false;
        int mine = Volatile.Read(ref self.Decoding);
        foreach (var w in _workers) if (w != self && Volatile.Read(ref w.Decoding) < mine) return false;
        return true;
    }

    /// <summary>
    /// Takes queued requests while this worker may (<see cref="MayAdmit"/>): work from <see cref="RunAsync"/> runs here,
    /// alone on this worker, between its rounds; a stream starts its generation (prefill) and joins this worker's batch.
    /// Returns false once the queue is completed (shutdown).
    /// </summary>
    bool Admit(Worker self, ChannelReader<WorkItem> reader)
    {
        while (MayAdmit(self))
        {
            // The place is reserved before the item is read, so that two workers admitting at once never exceed the bound.
            if (Interlocked.Increment(ref _batchSize) > _options.MaxBatchSize) { Interlocked.Decrement(ref _batchSize); break; }
            if (!reader.TryRead(out var item)) { Interlocked.Decrement(ref _batchSize); break; }
            bool placeHeld = true;   // until a generation takes it over, or it is given back
            // An item cancelled while it waited was already taken out of the count (and its caller told); skip it.
            if (item.TryStart())
            {
                Interlocked.Increment(ref _running);
                Interlocked.Decrement(ref _queued);
                try
                {
                    if (item.Exclusive is { } work)
                    {
                        ReleasePlace();   // work holds no generation: the place is free while it runs
                        placeHeld = false;
                        try { work(self.Generator!); } finally { Interlocked.Decrement(ref _running); }
                    }
                    else if (item.Stream is { } run)
                    {
                        if (run.Ct.IsCancellationRequested) End(self, run, new OperationCanceledException(run.Ct));
                        else
                        {
                            try { run.Sequence = run.Start(self.Generator!); }
                            catch (Exception e) { End(self, run, e); }
                            if (run.Sequence is not null)
                            {
                                placeHeld = false;   // the generation holds it until Free
                                Interlocked.Increment(ref self.Decoding);
                                Interlocked.Increment(ref self.Admitted);
                                SignalLoadChanged();   // a worker that may not admit waits for a change of load: another worker taking a place is one
                                self.Active.Add(run);
                                Deliver(self, run);
                            }
                        }
                    }
                }
                finally { item.Dispose(); }
            }
            else item.Dispose();
            if (placeHeld) ReleasePlace();
        }
        return !reader.Completion.IsCompleted;
    }

    /// <summary>One round over the runnable generations; a failure of the shared forward ends each of them with it.</summary>
    void RunRound(Worker self, List<Generator.DecodeSequence> runnable)
    {
        var active = self.Active;
        int largest;
        while (runnable.Count > (largest = Volatile.Read(ref _largestBatch)) && Interlocked.CompareExchange(ref _largestBatch, runnable.Count, largest) != largest) { }
        try { self.Generator!.Round(runnable); }
        catch (Exception e)
        {
            for (int i = active.Count - 1; i >= 0; i--)
                if (active[i].Sequence is { } s && runnable.Contains(s)) { End(self, active[i], e); active.RemoveAt(i); }
            return;
        }
        foreach (var r in active) if (r.Sequence is { } s && runnable.Contains(s)) Deliver(self, r);
    }

    /// <summary>Writes the generation's new chunk, or holds it (pausing the generation) while the reader's buffer is full.</summary>
    void Deliver(Worker self, StreamRun r)
    {
        var s = r.Sequence!;
        if (s.TakeChunk() is { } chunk && !r.Writer.TryWrite(chunk)) { r.Unwritten = chunk; r.BlockedSince = System.Diagnostics.Stopwatch.GetTimestamp(); }
        if (s.Done) Free(self, r);   // its cache and draft session are freed now; a held chunk still waits for its reader
    }

    /// <summary>
    /// Ends a stream: frees its generation and completes its channel (with <paramref name="error"/> if any). The counts
    /// drop first (running, then the batch), so that a caller who sees the stream end, or the batch shrink, sees them lowered.
    /// </summary>
    void End(Worker self, StreamRun r, Exception? error)
    {
        Interlocked.Decrement(ref _running);
        Free(self, r);
        r.Writer.TryComplete(error);
    }

    /// <summary>Leaves the batch: the generation's cache and draft session are freed.</summary>
    void Free(Worker self, StreamRun r)
    {
        if (r.Sequence is not { } s) return;
        r.Sequence = null;
        s.Dispose();
        Interlocked.Decrement(ref self.Decoding);
        ReleasePlace();
    }

    /// <summary>Gives a place in the engine's batches back and wakes the workers that wait for one.</summary>
    void ReleasePlace()
    {
        Interlocked.Decrement(ref _batchSize);
        SignalLoadChanged();
    }

    /// <summary>Wakes the workers waiting for a change of load (see <see cref="_loadChanged"/>).</summary>
    void SignalLoadChanged() =>
        Interlocked.Exchange(ref _loadChanged, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();

    /// <summary>
    /// Every admitted stream is paused for its reader: sleeps until a reader makes room, a stream is cancelled, the first
    /// idle timeout falls due, a request arrives (when this worker may admit) or the load changes elsewhere (when not).
    /// </summary>
    void WaitForProgress(Worker self, ChannelReader<WorkItem> reader, bool open)
    {
        var waits = new List<Task>(self.Active.Count + 1);
        var timeout = Timeout.InfiniteTimeSpan;
        foreach (var r in self.Active)
        {
            if (r.Unwritten is null) continue;
            waits.Add(r.Writer.WaitToWriteAsync(r.Ct).AsTask());
            if (_options.StreamIdleTimeout != Timeout.InfiniteTimeSpan)
            {
                var left = _options.StreamIdleTimeout - System.Diagnostics.Stopwatch.GetElapsedTime(r.BlockedSince);
                if (left < TimeSpan.Zero) left = TimeSpan.Zero;
                if (timeout == Timeout.InfiniteTimeSpan || left < timeout) timeout = left;
            }
        }
        if (open)
        {
            var changed = Volatile.Read(ref _loadChanged).Task;   // read before MayAdmit, so no change in between is missed
            waits.Add(MayAdmit(self) ? reader.WaitToReadAsync().AsTask() : changed);
        }
        if (waits.Count > 0) Task.WaitAny(waits.ToArray(), timeout);
    }

    /// <summary>
    /// Runs arbitrary work on an engine thread (e.g. a measurement) and returns its result. It runs alone on one worker,
    /// between two of its rounds, with that worker's generator (other workers go on decoding).
    /// </summary>
    public async Task<T> RunAsync<T>(Func<Generator, CancellationToken, T> work, CancellationToken cancellationToken = default)
    {
        await Ready.ConfigureAwait(false);
        var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        Enqueue(new WorkItem(g =>
        {
            if (cancellationToken.IsCancellationRequested) tcs.TrySetCanceled(cancellationToken);
            else try { tcs.TrySetResult(work(g, cancellationToken)); }
                catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested) { tcs.TrySetCanceled(cancellationToken); }
                catch (Exception e) { tcs.TrySetException(e); }
        }, null), cancellationToken, () => tcs.TrySetCanceled(cancellationToken));
        return await tcs.Task.ConfigureAwait(false);
    }

    /// <summary>Streams a completion of a text prompt.</summary>
    public IAsyncEnumerable<GenerationChunk> GenerateAsync(string prompt, GenerationOptions options, GenerationStats? stats = null, CancellationToken cancellationToken = default)
        => Stream(g => g.Start(prompt, options, stats ?? new GenerationStats()), cancellationToken);

    /// <summary>Streams a completion of token ids.</summary>
    public IAsyncEnumerable<GenerationChunk> GenerateAsync(IReadOnlyList<int> promptIds, GenerationOptions options, GenerationStats? stats = null, CancellationToken cancellationToken = default)
        => Stream(g => g.Start(promptIds, options, stats ?? new GenerationStats()), cancellationToken);

    /// <summary>Runs a whole completion.</summary>
    public async Task<GenerationResult> CompleteAsync(string prompt, GenerationOptions options, CancellationToken cancellationToken = default)
    {
        var stats = new GenerationStats();
        var text = new System.Text.StringBuilder(); var ids = new List<int>();
        await foreach (var c in GenerateAsync(prompt, options, stats, cancellationToken).ConfigureAwait(false)) { text.Append(c.Text); ids.AddRange(c.TokenIds); }
        return new GenerationResult(text.ToString(), ids.ToArray(), stats);
    }

    /// <summary>How many chunks (rounds) a stream's generation may run ahead of its reader.</summary>
    internal const int StreamBuffer = 16;

    async IAsyncEnumerable<GenerationChunk> Stream(Func<Generator, Generator.DecodeSequence> start, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await Ready.ConfigureAwait(false);
        // Bounded: generation runs at most StreamBuffer chunks ahead of the reader, so a caller who cancels after reading
        // an update stops generation within a few rounds however late its cancellation arrives (at ~10,000 tokens/s an
        // unbounded stream had run 178 tokens ahead of a test's cancel). A full buffer pauses this generation only (it
        // sits out the batch's rounds); a reader that stops reading without cancelling or disposing the stream holds
        // its place in the batch for EngineOptions.StreamIdleTimeout at most.
        var output = Channel.CreateBounded<GenerationChunk>(new BoundedChannelOptions(StreamBuffer)
        {
            SingleReader = true, SingleWriter = true, FullMode = BoundedChannelFullMode.Wait,
        });
        // Cancelled by the caller, by the engine shutting down, or by the caller abandoning the stream (finally below).
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _shutdown.Token);
        var ct = linked.Token;
        // The worker checks the token between rounds, so cancellation stops generation within one round.
        Enqueue(new WorkItem(null, new StreamRun(start, output.Writer, ct)), ct, () => output.Writer.TryComplete(new OperationCanceledException(ct)));
        try
        {
            // The caller's token ends the wait at once, also while the request is still queued behind others.
            await foreach (var chunk in output.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return chunk;
        }
        finally
        {
            if (!output.Reader.Completion.IsCompleted) linked.Cancel();
        }
    }

    /// <param name="cancellationToken">Cancels the item while it waits: it leaves the queue depth at once, <paramref name="onCancelledWhileQueued"/>
    /// tells its caller, and the worker skips it when it gets there.</param>
    void Enqueue(WorkItem item, CancellationToken cancellationToken, Action onCancelledWhileQueued)
    {
        if (_shutdown.IsCancellationRequested) throw new ObjectDisposedException(nameof(BeagleEngine));
        cancellationToken.ThrowIfCancellationRequested();
        // At most QueueCapacity may wait (those running, up to a batch, are not counted here).
        if (Interlocked.Increment(ref _queued) > _options.QueueCapacity)
        {
            Interlocked.Decrement(ref _queued);
            throw new EngineBusyException(_options.QueueCapacity);
        }
        // Registered before the worker can see the item, so the worker always disposes a complete registration.
        item.Registration = cancellationToken.UnsafeRegister(_ =>
        {
            if (!item.TryAbandon()) return;   // already running: the worker observes the token itself
            Interlocked.Decrement(ref _queued);
            onCancelledWhileQueued();
        }, null);
        if (!_queue.Writer.TryWrite(item))
        {
            item.Dispose();
            if (item.TryAbandon()) Interlocked.Decrement(ref _queued);
            throw new EngineBusyException(_options.QueueCapacity);
        }
    }

    /// <summary>An admitted stream: its generation (null once finished), its channel, and a chunk held while the reader's buffer is full.</summary>
    sealed class StreamRun(Func<Generator, Generator.DecodeSequence> start, ChannelWriter<GenerationChunk> writer, CancellationToken ct)
    {
        public Func<Generator, Generator.DecodeSequence> Start { get; } = start;
        public ChannelWriter<GenerationChunk> Writer { get; } = writer;
        public CancellationToken Ct { get; } = ct;
        public Generator.DecodeSequence? Sequence { get; set; }
        public GenerationChunk? Unwritten { get; set; }
        /// <summary>Stopwatch timestamp from which <see cref="Unwritten"/> waits for the reader.</summary>
        public long BlockedSince { get; set; }
    }

    /// <summary>
    /// A queued request: exclusive work (<see cref="RunAsync"/>) or a stream. Exactly one of <see cref="TryStart"/>
    /// (worker) and <see cref="TryAbandon"/> (cancellation) wins.
    /// </summary>
    sealed class WorkItem(Action<Generator>? exclusive, StreamRun? stream) : IDisposable
    {
        const int Queued = 0, Started = 1, Abandoned = 2;
        int _state;
        public Action<Generator>? Exclusive { get; } = exclusive;
        public StreamRun? Stream { get; } = stream;
        public CancellationTokenRegistration Registration { get; set; }
        public bool TryStart() => Interlocked.CompareExchange(ref _state, Started, Queued) == Queued;
        public bool TryAbandon() => Interlocked.CompareExchange(ref _state, Abandoned, Queued) == Queued;
        public void Dispose() => Registration.Dispose();
    }

    public async ValueTask DisposeAsync()
    {
        if (_shutdown.IsCancellationRequested) return;
        _shutdown.Cancel();
        _queue.Writer.TryComplete();
        await Task.Run(() => { foreach (var w in _workers) w.Thread.Join(); }).ConfigureAwait(false);
        _shutdown.Dispose();
    }

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();
}
