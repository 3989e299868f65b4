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
    /// <summary>Requests that may wait while one runs; a full queue rejects new requests at once (no hang).</summary>
    public int QueueCapacity { get; init; } = 16;
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
    /// A stream that is neither read, disposed nor cancelled for this long is abandoned: its generation stops, the worker
    /// takes the next request, and a reader that comes back gets a TimeoutException after the buffered chunks. (Not
    /// when its enumerator is garbage-collected: that may be never, and the engine must not depend on it.)
    /// Timeout.InfiniteTimeSpan turns it off.
    /// </summary>
    public TimeSpan StreamIdleTimeout { get; init; } = TimeSpan.FromSeconds(30);

    public EngineOptions Validate()
    {
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
/// One worker thread that owns a loaded model and runs generation requests one at a time from a bounded queue.
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
    int _waiting;

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
    public int QueueDepth => Volatile.Read(ref _waiting);

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
        while (reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
            while (reader.TryRead(out var item))
            {
                // An item cancelled while it waited was already taken out of the count (and its caller told); skip it.
                if (!item.TryStart()) continue;
                // Work items run synchronously on this thread; they complete their own task objects.
                try { item.Work(_generator!).GetAwaiter().GetResult(); } catch { /* reported to the caller through its channel */ }
                finally { item.Dispose(); }
                Interlocked.Decrement(ref _waiting);
            }
        _models.Dispose();
    }

    /// <summary>Runs arbitrary work on the engine thread (e.g. a measurement) and returns its result.</summary>
    public async Task<T> RunAsync<T>(Func<Generator, CancellationToken, T> work, CancellationToken cancellationToken = default)
    {
        await Ready.ConfigureAwait(false);
        var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        Enqueue(g =>
        {
            if (cancellationToken.IsCancellationRequested) tcs.TrySetCanceled(cancellationToken);
            else try { tcs.TrySetResult(work(g, cancellationToken)); }
                catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested) { tcs.TrySetCanceled(cancellationToken); }
                catch (Exception e) { tcs.TrySetException(e); }
            return Task.CompletedTask;
        }, cancellationToken, () => tcs.TrySetCanceled(cancellationToken));
        return await tcs.Task.ConfigureAwait(false);
    }

    /// <summary>Streams a completion of a text prompt.</summary>
    public IAsyncEnumerable<GenerationChunk> GenerateAsync(string prompt, GenerationOptions options, GenerationStats? stats = null, CancellationToken cancellationToken = default)
        => Stream((g, ct) => g.Generate(prompt, options, stats, ct), cancellationToken);

    /// <summary>Streams a completion of token ids.</summary>
    public IAsyncEnumerable<GenerationChunk> GenerateAsync(IReadOnlyList<int> promptIds, GenerationOptions options, GenerationStats? stats = null, CancellationToken cancellationToken = default)
        => Stream((g, ct) => g.Generate(promptIds, options, stats, ct), cancellationToken);

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

    async IAsyncEnumerable<GenerationChunk> Stream(Func<Generator, CancellationToken, IEnumerable<GenerationChunk>> start, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await Ready.ConfigureAwait(false);
        // Bounded: generation runs at most StreamBuffer chunks ahead of the reader, so a caller who cancels after reading
        // an update stops generation within a few rounds however late its cancellation arrives (at ~10,000 tokens/s an
        // unbounded stream had run 178 tokens ahead of a test's cancel). The price: a reader that stops reading without
        // cancelling or disposing the stream holds the worker, for EngineOptions.StreamIdleTimeout at most.
        var output = Channel.CreateBounded<GenerationChunk>(new BoundedChannelOptions(StreamBuffer)
        {
            SingleReader = true, SingleWriter = true, FullMode = BoundedChannelFullMode.Wait,
        });
        // Cancelled by the caller, by the engine shutting down, or by the caller abandoning the stream (finally below).
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _shutdown.Token);
        var ct = linked.Token;
        Enqueue(g =>
        {
            try
            {
                // The generator checks the token once per round, so cancellation stops generation within one round.
                foreach (var chunk in start(g, ct))
                    if (!output.Writer.TryWrite(chunk))
                        WaitForReader(output.Writer, chunk, ct);
                output.Writer.TryComplete();
            }
            catch (Exception e) { output.Writer.TryComplete(e); }
            return Task.CompletedTask;
        }, ct, () => output.Writer.TryComplete(new OperationCanceledException(ct)));
        try
        {
            // The caller's token ends the wait at once, also while the request is still queued behind another one.
            await foreach (var chunk in output.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return chunk;
        }
        finally
        {
            if (!output.Reader.Completion.IsCompleted) linked.Cancel();
        }
    }

    /// <summary>
    /// Writes <paramref name="chunk"/> once the reader has made room, on the worker's own thread; throws TimeoutException
    /// when the reader leaves it unread for <see cref="EngineOptions.StreamIdleTimeout"/> (an abandoned stream).
    /// </summary>
    void WaitForReader(ChannelWriter<GenerationChunk> writer, GenerationChunk chunk, CancellationToken ct)
    {
        using var idle = CancellationTokenSource.CreateLinkedTokenSource(ct);
        idle.CancelAfter(_options.StreamIdleTimeout);
        try { writer.WriteAsync(chunk, idle.Token).AsTask().GetAwaiter().GetResult(); }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            throw new TimeoutException($"the stream was not read for {_options.StreamIdleTimeout.TotalSeconds:0.###} s (EngineOptions.StreamIdleTimeout), " +
                "so its generation was stopped to let other requests run; read a stream to its end, or dispose or cancel it");
        }
    }

    /// <param name="cancellationToken">Cancels the item while it waits: it leaves the queue depth at once, <paramref name="onCancelledWhileQueued"/>
    /// tells its caller, and the worker skips it when it gets there.</param>
    void Enqueue(Func<Generator, Task> work, CancellationToken cancellationToken, Action onCancelledWhileQueued)
    {
        if (_shutdown.IsCancellationRequested) throw new ObjectDisposedException(nameof(BeagleEngine));
        cancellationToken.ThrowIfCancellationRequested();
        var item = new WorkItem(work);
        // Waiting plus the one running: at most QueueCapacity may wait.
        if (Interlocked.Increment(ref _waiting) > _options.QueueCapacity + 1)
        {
            Interlocked.Decrement(ref _waiting);
            throw new EngineBusyException(_options.QueueCapacity);
        }
        // Registered before the worker can see the item, so the worker always disposes a complete registration.
        item.Registration = cancellationToken.UnsafeRegister(_ =>
        {
            if (!item.TryAbandon()) return;   // already running: the work observes the token itself
            Interlocked.Decrement(ref _waiting);
            onCancelledWhileQueued();
        }, null);
        if (!_queue.Writer.TryWrite(item))
        {
            item.Dispose();
            if (item.TryAbandon()) Interlocked.Decrement(ref _waiting);
            throw new EngineBusyException(_options.QueueCapacity);
        }
    }

    /// <summary>A queued request. Exactly one of <see cref="TryStart"/> (worker) and <see cref="TryAbandon"/> (cancellation) wins.</summary>
    sealed class WorkItem(Func<Generator, Task> work) : IDisposable
    {
        const int Queued = 0, Started = 1, Abandoned = 2;
        int _state;
        public Func<Generator, Task> Work { get; } = work;
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
