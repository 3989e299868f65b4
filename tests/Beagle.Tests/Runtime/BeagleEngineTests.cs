using System.Diagnostics;
using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Runtime;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Runtime;

public sealed class BeagleEngineTests
{
    static BeagleEngine Start(int queueCapacity = 16, TimeSpan? streamIdleTimeout = null, int maxBatchSize = 8) => new(() =>
    {
        var t = TargetLoader.Load(TestAssets.ModelPath, TestAssets.TokenizerPath);
        return new EngineModels(t.Model, t.Tokenizer);
    }, new EngineOptions { Threads = 1, QueueCapacity = queueCapacity, StreamIdleTimeout = streamIdleTimeout ?? TimeSpan.FromSeconds(30), MaxBatchSize = maxBatchSize });

    static readonly GenerationOptions Greedy = new() { MaxNewTokens = 48 };

    [Fact]
    public async Task A_queued_stream_that_is_cancelled_ends_at_once_while_the_running_request_continues()
    {
        await using var engine = Start();
        await engine.Ready;
        // The running request: holds the worker until released, then generates (so "continues" is observable).
        using var release = new ManualResetEventSlim();
        using var running = new ManualResetEventSlim();
        var first = engine.RunAsync((g, ct) => { running.Set(); release.Wait(TimeSpan.FromSeconds(30)); return g.Complete("Once upon a time", Greedy, ct).Text; });
        Assert.True(running.Wait(TimeSpan.FromSeconds(10)));

        using var cts = new CancellationTokenSource();
        var second = Consume(engine.GenerateAsync("The little dog", Greedy, cancellationToken: cts.Token));
        await WaitUntil(() => engine.QueueDepth == 2);
        cts.Cancel();
        var e = await Record.ExceptionAsync(() => second);

        Assert.IsAssignableFrom<OperationCanceledException>(e);
        // The running request still holds the worker (until released below), so the queued one ended without waiting for it.
        Assert.False(first.IsCompleted);
        Assert.Equal(1, engine.QueueDepth);   // the cancelled request left the count at once

        release.Set();
        var text = await first.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer).Complete("Once upon a time", Greedy).Text, text);
        // The worker skipped the cancelled item, the count is back to zero and the engine still serves.
        var after = await engine.CompleteAsync("The little dog", Greedy);
        Assert.Equal(new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer).Complete("The little dog", Greedy).Text, after.Text);
        await WaitUntil(() => engine.QueueDepth == 0);
    }

    [Fact]
    public async Task A_stream_runs_only_a_bounded_distance_ahead_and_leaving_it_frees_the_worker()
    {
        await using var engine = Start();
        await engine.Ready;
        var stats = new GenerationStats();
        var options = new GenerationOptions { MaxNewTokens = 400 };
        // Read one chunk, then stop reading (without cancelling): generation must wait for the reader...
        var stream = engine.GenerateAsync("Once upon a time", options, stats).GetAsyncEnumerator();
        Assert.True(await stream.MoveNextAsync());
        await Task.Delay(300);   // far longer than 400 tokens take (~10,000 tokens/s): an unbounded stream would finish
        Assert.InRange(stats.NewTokens, 1, BeagleEngine.StreamBuffer + 4);
        // ...and leaving the stream (disposing it) releases the worker for the next request.
        await stream.DisposeAsync();
        var next = await engine.CompleteAsync("The little dog", Greedy).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.NotEmpty(next.TokenIds);
    }

    [Fact]
    public async Task An_abandoned_stream_read_once_then_neither_read_nor_disposed_releases_the_worker_after_the_idle_timeout()
    {
        // One generation at a time: the next request needs the abandoned one's place (BatchingTests covers larger batches).
        // The idle timeout is short for a test but long next to a scheduling delay: the next request's reader, busy on a
        // loaded machine, must not be taken for an abandoned one.
        await using var engine = Start(streamIdleTimeout: TimeSpan.FromSeconds(2), maxBatchSize: 1);
        await engine.Ready;
        var abandoned = engine.GenerateAsync("Once upon a time", new GenerationOptions { MaxNewTokens = 400 }).GetAsyncEnumerator();
        Assert.True(await abandoned.MoveNextAsync());   // read once, then left alone (kept reachable: no finaliser helps)

        // Before: this request waited behind the abandoned one forever.
        var next = await engine.CompleteAsync("The little dog", Greedy).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer).Complete("The little dog", Greedy).Text, next.Text);

        // A reader that comes back gets what was buffered, then the reason its stream ended.
        int buffered = 0;
        var e = await Record.ExceptionAsync(async () => { while (await abandoned.MoveNextAsync()) buffered++; });
        Assert.IsType<TimeoutException>(e);
        Assert.Contains("StreamIdleTimeout", e.Message);
        Assert.InRange(buffered, 1, BeagleEngine.StreamBuffer);
        await abandoned.DisposeAsync();
        Assert.Throws<ArgumentOutOfRangeException>(() => new EngineOptions { StreamIdleTimeout = TimeSpan.Zero }.Validate());
    }

    [Fact]
    public async Task A_request_cancelled_while_queued_gives_its_place_back_at_once()
    {
        await using var engine = Start(queueCapacity: 1);
        await engine.Ready;
        using var release = new ManualResetEventSlim();
        using var running = new ManualResetEventSlim();
        var first = engine.RunAsync((_, _) => { running.Set(); release.Wait(TimeSpan.FromSeconds(30)); return 1; });
        Assert.True(running.Wait(TimeSpan.FromSeconds(10)));
        using var cts = new CancellationTokenSource();
        var queued = engine.RunAsync((_, _) => 2, cts.Token);                  // fills the one waiting place
        await Assert.ThrowsAsync<EngineBusyException>(() => engine.RunAsync((_, _) => 3));
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => queued);
        var third = engine.RunAsync((_, _) => 3);                               // the place is free again at once
        release.Set();
        Assert.Equal(1, await first);
        Assert.Equal(3, await third.WaitAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task A_queued_RunAsync_that_is_cancelled_ends_at_once()
    {
        await using var engine = Start();
        await engine.Ready;
        using var release = new ManualResetEventSlim();
        using var running = new ManualResetEventSlim();
        var first = engine.RunAsync((_, _) => { running.Set(); release.Wait(TimeSpan.FromSeconds(30)); return 1; });
        Assert.True(running.Wait(TimeSpan.FromSeconds(10)));
        using var cts = new CancellationTokenSource();
        bool ran = false;
        var second = engine.RunAsync((_, _) => ran = true, cts.Token);

        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => second.WaitAsync(TimeSpan.FromSeconds(1)));
        Assert.Equal(1, engine.QueueDepth);

        release.Set();
        Assert.Equal(1, await first);
        Assert.Equal(2, await engine.RunAsync((_, _) => 2));
        Assert.False(ran);   // skipped by the worker
        // The worker lowers the count just after completing the last item's task, so wait for it rather than race it.
        await WaitUntil(() => engine.QueueDepth == 0);
    }

    static async Task Consume(IAsyncEnumerable<GenerationChunk> stream)
    {
        await foreach (var _ in stream) { }
    }

    static async Task WaitUntil(Func<bool> condition)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.Elapsed > TimeSpan.FromSeconds(10)) throw new TimeoutException("condition not reached");
            await Task.Delay(5);
        }
    }

    [Fact]
    public async Task Calibration_at_load_turns_a_useless_draft_off_and_caches_the_decision()
    {
        using var tmp = TestAssets.TempDir();
        var cacheFile = Path.Combine(tmp.Path, "budgets.json");
        BeagleEngine StartWithRandomDraft() => new(() =>
        {
            var t = TargetLoader.Load(TestAssets.ModelPath, TestAssets.TokenizerPath);
            return new EngineModels(t.Model, t.Tokenizer, MarkovDraft.Random(t.Model.Config.VocabSize, seed: 5));
        }, new EngineOptions { Threads = 1, CalibrateTreeBudget = true, TreeBudgetCacheFile = cacheFile });

        await using (var engine = StartWithRandomDraft())
        {
            await engine.Ready;
            var r = await engine.CompleteAsync("Once upon a time", new GenerationOptions { MaxNewTokens = 16, Speculative = new SpeculativeOptions() });
            Assert.Equal(r.Stats.NewTokens, r.Stats.TargetForwards + 1);   // plain: one forward per token after the prefill's
            Assert.Equal(0, r.Stats.DraftRounds);
        }
        Assert.True(File.Exists(cacheFile));
        var written = File.GetLastWriteTimeUtc(cacheFile);
        await using (var engine = StartWithRandomDraft())
        {
            await engine.Ready;                                              // the second load reuses the cached decision
            Assert.Equal(written, File.GetLastWriteTimeUtc(cacheFile));
        }
    }
}
