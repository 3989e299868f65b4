using System.Diagnostics;
using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Runtime;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Runtime;

/// <summary>
/// Continuous batching in <see cref="BeagleEngine"/>: generations decoded together give exactly what each gives alone
/// (greedy: the same tokens; sampled with a seed: the same samples), whether they start together or join and leave
/// mid-run, and a generation that is cancelled or whose reader falls behind leaves or pauses without holding the
/// others. The reference is the same request run alone through <see cref="Generator"/> on the test's thread.
/// To make requests share rounds deterministically, the worker is held by a RunAsync while they queue: released, it
/// admits them all before the next round.
/// </summary>
public sealed class BatchingTests
{
    static BeagleEngine Start(string model = "stories260K", string? draftArch = null, int maxBatch = 8, TimeSpan? idle = null, int workers = 1) => new(() =>
    {
        var dir = Path.Combine(TestAssets.Shared, "models", model);
        var t = TargetLoader.Load(Path.Combine(dir, model + ".bin"), Path.Combine(dir, "tok512.bin"));
        var draft = draftArch is null ? null : DraftCheckpoint.Load(Path.Combine(AppContext.BaseDirectory, "models", model, draftArch), t.Model);
        return new EngineModels(t.Model, t.Tokenizer, draft);
    }, new EngineOptions { Threads = 1, MaxBatchSize = maxBatch, StreamIdleTimeout = idle ?? TimeSpan.FromSeconds(30), Workers = workers });

    static readonly string[] Prompts = ["Once upon a time", "The little dog", "Lily and Tom went to the park", "One day, a big bird", "The sun was", "Sam had a red ball"];

    /// <summary>The request run alone on this thread, through a generator of its own over the shared test target.</summary>
    static GenerationResult Alone(string model, IDraftModel? draft, string prompt, GenerationOptions o)
        => new Generator(TestAssets.Target(model), TestAssets.StoriesTokenizer, draft).Complete(prompt, o);

    /// <summary>Queues every request while the worker is held, then releases it: they join the batch together.</summary>
    static async Task<GenerationResult[]> Together(BeagleEngine engine, IReadOnlyList<(string Prompt, GenerationOptions Options)> requests)
    {
        using var release = new ManualResetEventSlim();
        using var held = new ManualResetEventSlim();
        var blocker = engine.RunAsync((_, _) => { held.Set(); release.Wait(TimeSpan.FromSeconds(30)); return 0; });
        Assert.True(held.Wait(TimeSpan.FromSeconds(30)));
        var tasks = requests.Select(r => engine.CompleteAsync(r.Prompt, r.Options)).ToArray();
        // With more than one worker, the free ones take what they may meanwhile.
        await WaitUntil(() => engine.WaitingRequests + engine.BatchSize == requests.Count);
        release.Set();
        await blocker;
        return await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(120));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("beagle")]
    [InlineData("eagle2")]
    public async Task Greedy_requests_decoded_together_give_each_its_output_alone(string? arch)
    {
        await using var engine = Start(draftArch: arch);
        await engine.Ready;
        // Chains (the default budget) and trees (tree-masked rows in the shared forward) side by side.
        SpeculativeOptions? Spec(int i) => arch is null ? null : i % 2 == 0 ? new SpeculativeOptions() : new SpeculativeOptions { TreeTokens = 8, TreeDepth = 4, TreeTopK = 2 };
        // Different lengths, limits and a stop string, so that generations leave the batch at different rounds.
        var requests = Prompts.Select((p, i) => (p, new GenerationOptions
        {
            MaxNewTokens = 20 + 37 * i, Speculative = Spec(i), StopStrings = i == 2 ? ["park."] : [],
        })).ToArray();
        var batched = await Together(engine, requests);

        using var draft = arch is null ? null : DraftCheckpoint.Load(Path.Combine(AppContext.BaseDirectory, "models", "stories260K", arch), TestAssets.Stories);
        for (int i = 0; i < requests.Length; i++)
        {
            var alone = Alone("stories260K", draft, requests[i].p, requests[i].Item2);
            Assert.Equal(alone.TokenIds, batched[i].TokenIds);
            Assert.Equal(alone.Text, batched[i].Text);
            Assert.Equal(alone.Stats.FinishReason, batched[i].Stats.FinishReason);
            if (arch is not null) Assert.True(batched[i].Stats.Speculative, $"request {i} did not speculate");
        }
        Assert.Equal(requests.Length, engine.LargestBatch);   // they did share rounds
        await WaitUntil(() => engine.BatchSize == 0 && engine.QueueDepth == 0);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Seeded_sampled_requests_decoded_together_give_the_samples_of_the_same_seed_alone(bool speculative)
    {
        await using var engine = Start(draftArch: speculative ? "beagle" : null);
        await engine.Ready;
        var requests = Prompts.Take(4).Select((p, i) => (p, new GenerationOptions
        {
            MaxNewTokens = 60 + 20 * i, Speculative = speculative ? new SpeculativeOptions() : null,
            Sampling = new SamplingOptions { Temperature = 0.9f, TopP = 0.95f, Seed = 100 + i },
        })).ToArray();
        var batched = await Together(engine, requests);

        using var draft = speculative ? DraftCheckpoint.Load(Path.Combine(AppContext.BaseDirectory, "models", "stories260K", "beagle"), TestAssets.Stories) : null;
        for (int i = 0; i < requests.Length; i++)
            Assert.Equal(Alone("stories260K", draft, requests[i].p, requests[i].Item2).TokenIds, batched[i].TokenIds);
        // Not all the same story: the seeds differ, so a sampler shared across sequences would show.
        Assert.True(batched.Select(b => string.Join(",", b.TokenIds)).Distinct().Count() > 1);
        Assert.Equal(requests.Length, engine.LargestBatch);
    }

    [Fact]
    public async Task Requests_joining_a_running_batch_and_leaving_it_mid_run_each_get_their_output_alone()
    {
        await using var engine = Start(draftArch: "beagle", maxBatch: 3);
        await engine.Ready;
        var longOne = new GenerationOptions { MaxNewTokens = 400, Speculative = new SpeculativeOptions() };
        var shortOnes = new GenerationOptions { MaxNewTokens = 25, Speculative = new SpeculativeOptions() };
        var plain = new GenerationOptions { MaxNewTokens = 40 };
        // The long generation starts alone; the others join while it runs (more than the batch holds: some wait for a
        // place), a plain one among speculative ones.
        var first = engine.GenerateAsync(Prompts[0], longOne).GetAsyncEnumerator();
        Assert.True(await first.MoveNextAsync());
        var ids = new List<int>(first.Current.TokenIds);
        var joiners = new[] { (Prompts[1], shortOnes), (Prompts[2], plain), (Prompts[3], shortOnes), (Prompts[4], plain) }
            .Select(r => (r, Task: engine.CompleteAsync(r.Item1, r.Item2))).ToArray();
        while (await first.MoveNextAsync()) ids.AddRange(first.Current.TokenIds);
        await first.DisposeAsync();

        using var draft = DraftCheckpoint.Load(Path.Combine(AppContext.BaseDirectory, "models", "stories260K", "beagle"), TestAssets.Stories);
        Assert.Equal(Alone("stories260K", draft, Prompts[0], longOne).TokenIds, ids.ToArray());
        foreach (var (r, task) in joiners)
            Assert.Equal(Alone("stories260K", draft, r.Item1, r.Item2).TokenIds, (await task.WaitAsync(TimeSpan.FromSeconds(60))).TokenIds);
        Assert.InRange(engine.LargestBatch, 1, 3);
    }

    [Fact]
    public async Task A_stream_cancelled_mid_run_leaves_the_batch_and_frees_its_place_while_the_other_continues()
    {
        await using var engine = Start();
        await engine.Ready;
        var o = new GenerationOptions { MaxNewTokens = 400 };
        using var cts = new CancellationTokenSource();
        var cancelled = engine.GenerateAsync(Prompts[0], o, cancellationToken: cts.Token).GetAsyncEnumerator();
        var kept = engine.GenerateAsync(Prompts[1], o).GetAsyncEnumerator();
        Assert.True(await cancelled.MoveNextAsync());
        Assert.True(await kept.MoveNextAsync());
        // Both are in the batch now; neither reader reads on, so both pause at their buffers' end and stay in.
        await WaitUntil(() => engine.BatchSize == 2);
        cts.Cancel();
        await WaitUntil(() => engine.BatchSize == 1);   // left at the next round, its cache freed
        Assert.Equal(1, engine.QueueDepth);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => { while (await cancelled.MoveNextAsync()) { } });
        await cancelled.DisposeAsync();

        var ids = new List<int>(kept.Current.TokenIds);
        while (await kept.MoveNextAsync()) ids.AddRange(kept.Current.TokenIds);
        await kept.DisposeAsync();
        Assert.Equal(Alone("stories260K", null, Prompts[1], o).TokenIds, ids.ToArray());
        await WaitUntil(() => engine.BatchSize == 0 && engine.QueueDepth == 0);
    }

    [Fact]
    public async Task A_slow_reader_pauses_only_its_own_generation()
    {
        await using var engine = Start(maxBatch: 2);
        await engine.Ready;
        var o = new GenerationOptions { MaxNewTokens = 300 };
        var slow = engine.GenerateAsync(Prompts[0], o).GetAsyncEnumerator();
        Assert.True(await slow.MoveNextAsync());   // then left unread while the other runs to its end
        var other = await engine.CompleteAsync(Prompts[1], o).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(Alone("stories260K", null, Prompts[1], o).TokenIds, other.TokenIds);
        Assert.Equal(1, engine.BatchSize);   // the slow one kept its place, paused

        var ids = new List<int>(slow.Current.TokenIds);
        while (await slow.MoveNextAsync()) ids.AddRange(slow.Current.TokenIds);
        await slow.DisposeAsync();
        Assert.Equal(Alone("stories260K", null, Prompts[0], o).TokenIds, ids.ToArray());
    }

    [Fact]
    public async Task Stories5M_streams_with_the_bundled_Beagle_draft_decoded_four_at_a_time_give_each_its_output_alone()
    {
        await using var engine = Start("stories5M", "beagle", maxBatch: 4);
        await engine.Ready;
        var requests = Prompts.Take(4).Select((p, i) => (p, new GenerationOptions { MaxNewTokens = 48 + 16 * i, Speculative = new SpeculativeOptions() })).ToArray();
        var batched = await Together(engine, requests);
        using var draft = DraftCheckpoint.Load(Path.Combine(AppContext.BaseDirectory, "models", "stories5M", "beagle"), TestAssets.Stories5M);
        for (int i = 0; i < requests.Length; i++)
            Assert.Equal(Alone("stories5M", draft, requests[i].p, requests[i].Item2).TokenIds, batched[i].TokenIds);
        Assert.Equal(4, engine.LargestBatch);
    }

    [Fact]
    public async Task An_abandoned_stream_leaves_the_batch_after_the_idle_timeout_while_the_others_run_on()
    {
        await using var engine = Start(idle: TimeSpan.FromSeconds(2));   // long next to a busy reader's scheduling delay
        await engine.Ready;
        var o = new GenerationOptions { MaxNewTokens = 300 };
        var abandoned = engine.GenerateAsync(Prompts[0], o).GetAsyncEnumerator();
        Assert.True(await abandoned.MoveNextAsync());   // read once, then left alone (kept reachable)
        await WaitUntil(() => engine.BatchSize == 0);   // paused at its buffer's end, then dropped at the timeout
        var next = await engine.CompleteAsync(Prompts[1], o).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(Alone("stories260K", null, Prompts[1], o).TokenIds, next.TokenIds);
        int buffered = 0;
        var e = await Record.ExceptionAsync(async () => { while (await abandoned.MoveNextAsync()) buffered++; });
        Assert.IsType<TimeoutException>(e);
        Assert.InRange(buffered, 1, BeagleEngine.StreamBuffer);
        await abandoned.DisposeAsync();
    }

    [Fact]
    public async Task Requests_spread_over_two_workers_give_each_its_output_alone()
    {
        await using var engine = Start(draftArch: "beagle", workers: 2);
        await engine.Ready;
        // Greedy chains and trees, a plain request and seeded samples: whichever worker runs a request and whoever shares
        // its rounds, it gets its output alone.
        var requests = Prompts.Select((p, i) => (p, new GenerationOptions
        {
            MaxNewTokens = 30 + 29 * i,
            Speculative = i == 3 ? null : i % 2 == 0 ? new SpeculativeOptions() : new SpeculativeOptions { TreeTokens = 8, TreeDepth = 4, TreeTopK = 2 },
            Sampling = i >= 4 ? new SamplingOptions { Temperature = 0.9f, TopP = 0.95f, Seed = 7 + i } : new SamplingOptions(),
        })).ToArray();
        // One worker is held while they queue, so the other takes what it may; the held one, released, takes its share.
        var batched = await Together(engine, requests);

        using var draft = DraftCheckpoint.Load(Path.Combine(AppContext.BaseDirectory, "models", "stories260K", "beagle"), TestAssets.Stories);
        for (int i = 0; i < requests.Length; i++)
            Assert.Equal(Alone("stories260K", draft, requests[i].p, requests[i].Item2).TokenIds, batched[i].TokenIds);
        var admitted = engine.WorkerAdmissions;
        Assert.Equal(requests.Length, admitted.Sum());
        Assert.All(admitted, n => Assert.True(n >= 1, $"a worker admitted nothing: {string.Join(", ", admitted)}"));
        await WaitUntil(() => engine.BatchSize == 0 && engine.QueueDepth == 0);
    }

    [Fact]
    public async Task Two_workers_never_hold_more_generations_than_the_batch_size_and_a_freed_place_goes_to_the_next_request()
    {
        await using var engine = Start(maxBatch: 2, workers: 2);
        await engine.Ready;
        var o = Prompts.Select((_, i) => new GenerationOptions { MaxNewTokens = 40 + 20 * i }).ToArray();
        int most = 0;
        using var watching = new CancellationTokenSource();
        var watcher = Task.Run(async () => { while (!watching.IsCancellationRequested) { most = Math.Max(most, engine.BatchSize); await Task.Delay(1); } });
        var results = await Task.WhenAll(Prompts.Select((p, i) => engine.CompleteAsync(p, o[i]))).WaitAsync(TimeSpan.FromSeconds(120));
        watching.Cancel();
        await watcher;
        for (int i = 0; i < Prompts.Length; i++) Assert.Equal(Alone("stories260K", null, Prompts[i], o[i]).TokenIds, results[i].TokenIds);
        Assert.InRange(most, 1, 2);
        Assert.Equal(Prompts.Length, engine.WorkerAdmissions.Sum());
        await WaitUntil(() => engine.BatchSize == 0 && engine.QueueDepth == 0);
    }

    [Fact]
    public async Task Disposing_an_engine_with_streams_on_two_workers_ends_them_and_returns()
    {
        var engine = Start(maxBatch: 4, workers: 2);
        await engine.Ready;
        var o = new GenerationOptions { MaxNewTokens = 400 };
        var streams = Prompts.Take(4).Select(p => engine.GenerateAsync(p, o).GetAsyncEnumerator()).ToArray();
        // One at a time, each left to pause at its buffer's end, so that the workers are asleep when the next arrives: a
        // worker that could not admit when it fell asleep must be woken when another's admission makes it the least loaded.
        foreach (var s in streams) { Assert.True(await s.MoveNextAsync()); await Task.Delay(200); }
        await WaitUntil(() => engine.BatchSize == 4);
        Assert.All(engine.WorkerAdmissions, n => Assert.Equal(2, n));   // the least loaded worker takes each request
        await engine.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30));
        foreach (var s in streams)
        {
            var e = await Record.ExceptionAsync(async () => { while (await s.MoveNextAsync()) { } });
            Assert.True(e is OperationCanceledException or ObjectDisposedException, $"the stream ended with {e?.GetType().Name ?? "no error"}");
            await s.DisposeAsync();
        }
    }

    [Theory]
    [InlineData(0, 8)]
    [InlineData(3, 2)]
    public void Workers_must_be_between_one_and_the_batch_size(int workers, int maxBatch)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new EngineOptions { Workers = workers, MaxBatchSize = maxBatch }.Validate());
        Assert.Equal("Workers", e.ParamName);
        Assert.Equal(2, new EngineOptions { Workers = 2, MaxBatchSize = 2 }.Validate().Workers);
    }

    [Fact]
    public void The_batch_size_must_be_at_least_one()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new EngineOptions { MaxBatchSize = 0 }.Validate());
        Assert.Equal("MaxBatchSize", e.ParamName);
        Assert.Equal(1, new EngineOptions { MaxBatchSize = 1 }.Validate().MaxBatchSize);
    }

    static async Task WaitUntil(Func<bool> condition)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.Elapsed > TimeSpan.FromSeconds(20)) throw new TimeoutException("condition not reached");
            await Task.Delay(5);
        }
    }
}
