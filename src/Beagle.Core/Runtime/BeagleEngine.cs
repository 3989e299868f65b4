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
/// One worker thread that owns a loaded model and runs generation requests from a bounded queue, several at once:
/// continuous batching. Between rounds the worker admits waiting requests (up to <see cref="EngineOptions.MaxBatchSize"/>,
/// each prefilled on joining) and drops finished, cancelled and abandoned ones (freeing their caches and draft
/// sessions); each round, <see cref="Generator.Round"/> verifies every running generation's rows in one target forward.
/// Each generation keeps its own cache, draft session and random source, so its output is the one it would get alone.
/// TorchSharp dispose scopes and no_grad are per thread, so every tensor operation happens on that thread; callers
/// only await results (architecture.md, "Threading"). Faces (chat client, SK service, ML.NET, hosting, CLI) all
/// generate through <see cref="Generator"/>, which they reach through this engine or directly on one thread.
/// </summary>
public sealed class BeagleEngine : IAsyncDisposable, IDisposable
{
    readonly Channel<WorkItem> _queue;
    readonly Thread _worker;
    readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    readonly EngineOptions _options;
    readonly CancellationTokenSource _shutdown = new();
    EngineModels? _models;
    Generator? _generator;
    int _queued, _running, _batchSize, _largestBatch;

    /// <summary>Starts the worker and loads the models on it (<paramref name="load"/> runs on the worker thread).</summary>
    public BeagleEngine(Func<EngineModels> load, EngineOptions? options = null)
    {
        _options = (options ?? new EngineOptions()).Validate();
        // Unbounded channel, bounded by count: a request cancelled while queued gives its place back at once (the channel
        // would keep a slot until the worker skipped the item).
        _queue = Channel.CreateUnbounded<WorkItem>(new UnboundedChannelOptions { SingleReader = true });
        _worker = new Thread(() => WorkerLoop(load)) { IsBackground = true, Name = "beagle-engine" };
        _worker.Start();
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
    /// <summary>Generations in the running batch now (decoding, or paused for a slow reader); at most <see cref="MaxBatchSize"/>.</summary>
    public int BatchSize => Volatile.Read(ref _batchSize);
    /// <summary>The most generations decoded together (<see cref="EngineOptions.MaxBatchSize"/>).</summary>
    public int MaxBatchSize => _options.MaxBatchSize;
    /// <summary>The most generations that shared one round so far (tests: proof that requests were batched).</summary>
    internal int LargestBatch => Volatile.Read(ref _largestBatch);

    EngineModels Loaded => _models ?? throw new InvalidOperationException(Ready.IsFaulted ? $"the engine failed to load its model: {Ready.Exception!.InnerException!.Message}" : "the engine is still loading its model; await Ready first");

    void WorkerLoop(Func<EngineModels> load)
    {
        try
        {
            if (_options.Threads is { } t) TorchSharp.torch.set_num_threads(t);
            _models = load();
            _generator = new Generator(_models.Target, _models.Tokenizer, _models.Draft);
            if (_models.Draft is not null && _options.CalibrateTreeBudget)
            {
                ModelLoader.ApplyTreeBudget(_generator, TreeBudgetOptions.None, calibrate: true, _options.TreeBudgetCacheFile);
                ModelLoader.ApplyTreeBudget(_generator, TreeBudgetOptions.None, calibrate: true, _options.TreeBudgetCacheFile, TreeBudgetCalibrator.ChatSampling);
            }
            _ready.SetResult();
        }
        catch (Exception e) { _ready.SetException(e); return; }

        var reader = _queue.Reader;
        var active = new List<StreamRun>();   // admitted streams: decoding, paused for their reader, or delivering their last chunk
        try
        {
            while (true)
            {
                Service(active);
                bool open = Admit(reader, active);
                var runnable = new List<Generator.DecodeSequence>(active.Count);
                foreach (var r in active) if (r.Sequence is { } s && r.Unwritten is null) runnable.Add(s);
                if (runnable.Count > 0) { RunRound(active, runnable); continue; }
                if (active.Count == 0)
                {
                    if (!open) break;
                    reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult();
                    continue;
                }
                WaitForProgress(active, reader, open);
            }
        }
        finally
        {
            foreach (var r in active) End(r, new ObjectDisposedException(nameof(BeagleEngine)));
            _models.Dispose();
        }
    }

    /// <summary>Delivers held chunks whose reader made room; ends streams that were cancelled, disposed or left unread too long.</summary>
    void Service(List<StreamRun> active)
    {
        for (int i = active.Count - 1; i >= 0; i--)
        {
            var r = active[i];
            if (r.Ct.IsCancellationRequested) { End(r, new OperationCanceledException(r.Ct)); active.RemoveAt(i); continue; }
            if (r.Unwritten is { } chunk)
            {
                if (r.Writer.TryWrite(chunk)) r.Unwritten = null;
                else if (_options.StreamIdleTimeout != Timeout.InfiniteTimeSpan && System.Diagnostics.Stopwatch.GetElapsedTime(r.BlockedSince) >= _options.StreamIdleTimeout)
                {
                    End(r, new TimeoutException($"the stream was not read for {_options.StreamIdleTimeout.TotalSeconds:0.###} s (EngineOptions.StreamIdleTimeout), " +
                        "so its generation was stopped to let other requests run; read a stream to its end, or dispose or cancel it"));
                    active.RemoveAt(i);
                    continue;
                }
            }
            if (r.Unwritten is null && r.Sequence is null) { End(r, null); active.RemoveAt(i); }   // finished and delivered
        }
    }

    /// <summary>
    /// Takes queued requests while the batch has room: work from <see cref="RunAsync"/> runs here, alone, between rounds;
    /// a stream starts its generation (prefill) and joins the batch. Returns false once the queue is completed (shutdown).
    /// </summary>
    bool Admit(ChannelReader<WorkItem> reader, List<StreamRun> active)
    {
        while (Decoding(active) < _options.MaxBatchSize && reader.TryRead(out var item))
        {
            // An item cancelled while it waited was already taken out of the count (and its caller told); skip it.
            if (!item.TryStart()) continue;
            Interlocked.Increment(ref _running);
            Interlocked.Decrement(ref _queued);
            try
            {
                if (item.Exclusive is { } work) { try { work(_generator!); } finally { Interlocked.Decrement(ref _running); } continue; }
                var run = item.Stream!;
                if (run.Ct.IsCancellationRequested) { End(run, new OperationCanceledException(run.Ct)); continue; }
                try { run.Sequence = run.Start(_generator!); }
                catch (Exception e) { End(run, e); continue; }
                Interlocked.Increment(ref _batchSize);
                active.Add(run);
                Deliver(run);
            }
            finally { item.Dispose(); }
        }
        return !reader.Completion.IsCompleted;
    }

    /// <summary>One round over the runnable generations; a failure of the shared forward ends each of them with it.</summary>
    void RunRound(List<StreamRun> active, List<Generator.DecodeSequence> runnable)
    {
        if (runnable.Count > _largestBatch) Volatile.Write(ref _largestBatch, runnable.Count);
        try { _generator!.Round(runnable); }
        catch (Exception e)
        {
            for (int i = active.Count - 1; i >= 0; i--)
                if (active[i].Sequence is { } s && runnable.Contains(s)) { End(active[i], e); active.RemoveAt(i); }
            return;
        }
        foreach (var r in active) if (r.Sequence is { } s && runnable.Contains(s)) Deliver(r);
    }

    /// <summary>Writes the generation's new chunk, or holds it (pausing the generation) while the reader's buffer is full.</summary>
    void Deliver(StreamRun r)
    {
        var s = r.Sequence!;
        if (s.TakeChunk() is { } chunk && !r.Writer.TryWrite(chunk)) { r.Unwritten = chunk; r.BlockedSince = System.Diagnostics.Stopwatch.GetTimestamp(); }
        if (s.Done) Free(r);   // its cache and draft session are freed now; a held chunk still waits for its reader
    }

    /// <summary>
    /// Ends a stream: frees its generation and completes its channel (with <paramref name="error"/> if any). The counts
    /// drop first (running, then the batch), so that a caller who sees the stream end, or the batch shrink, sees them lowered.
    /// </summary>
    void End(StreamRun r, Exception? error)
    {
        Interlocked.Decrement(ref _running);
        Free(r);
        r.Writer.TryComplete(error);
    }

    /// <summary>Leaves the batch: the generation's cache and draft session are freed.</summary>
    void Free(StreamRun r)
    {
        if (r.Sequence is not { } s) return;
        r.Sequence = null;
        s.Dispose();
        Interlocked.Decrement(ref _batchSize);
    }

    /// <summary>
    /// Every admitted stream is paused for its reader: sleeps until a reader makes room, a stream is cancelled, the first
    /// idle timeout falls due, or (with room in the batch) a request arrives.
    /// </summary>
    void WaitForProgress(List<StreamRun> active, ChannelReader<WorkItem> reader, bool open)
    {
        var waits = new List<Task>(active.Count + 1);
        var timeout = Timeout.InfiniteTimeSpan;
        foreach (var r in active)
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
        if (open && Decoding(active) < _options.MaxBatchSize) waits.Add(reader.WaitToReadAsync().AsTask());
        if (waits.Count > 0) Task.WaitAny(waits.ToArray(), timeout);
    }

    static int Decoding(List<StreamRun> active)
    {
        int n = 0;
        foreach (var r in active) if (r.Sequence is not null) n++;
        return n;
    }

    /// <summary>Runs arbitrary work on the engine thread (e.g. a measurement) and returns its result. It runs alone, between two rounds of the batch.</summary>
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
        await Task.Run(() => _worker.Join()).ConfigureAwait(false);
        _shutdown.Dispose();
    }

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();
}
