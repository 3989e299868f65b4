using System.Diagnostics;
using System.Diagnostics.Metrics;
using Beagle.Decoding;
using Beagle.Runtime;
using Beagle.SemanticKernel;
using Beagle.Tests.Infrastructure;
using Beagle.Tokenization;
using Microsoft.Extensions.AI;

using Xunit;

namespace Beagle.Tests.SemanticKernel;

public sealed class BeagleChatClientTests(StoriesChatFixture fx) : IClassFixture<StoriesChatFixture>
{
    static List<ChatMessage> Story(string text = "Once upon a time, there was a little cat") => [new(ChatRole.User, text)];

    [Fact]
    public async Task Streaming_and_non_streaming_give_the_same_text()
    {
        var options = new ChatOptions { MaxOutputTokens = 40 };
        var response = await fx.Client.GetResponseAsync(Story(), options);
        var streamed = new System.Text.StringBuilder();
        ChatResponseUpdate? last = null;
        await foreach (var u in fx.Client.GetStreamingResponseAsync(Story(), options)) { streamed.Append(u.Text); last = u; }

        Assert.False(string.IsNullOrWhiteSpace(response.Text));
        Assert.Equal(response.Text, streamed.ToString());
        Assert.Equal(40, response.Usage!.OutputTokenCount);
        Assert.True(response.Usage.InputTokenCount > 5);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(1.0, (double)response.AdditionalProperties![BeagleChatClient.AcceptanceLengthKey]!, 3);   // plain decoding: tau = 1
        Assert.Equal(false, response.AdditionalProperties[BeagleChatClient.SpeculativeKey]);                    // no draft: nothing drafted
        Assert.Equal(0, response.AdditionalProperties[BeagleChatClient.DraftRoundsKey]);
        Assert.True((double)response.AdditionalProperties[BeagleChatClient.TokensPerSecondKey]! > 0);
        Assert.True((double)last!.AdditionalProperties![BeagleChatClient.TokensPerSecondKey]! > 0);
        Assert.Contains(last.Contents, c => c is UsageContent);
    }

    [Fact]
    public async Task Greedy_output_equals_the_core_generator_on_the_rendered_prompt()
    {
        var messages = new List<ChatMessage> { new(ChatRole.User, "Lily went to the park."), new(ChatRole.Assistant, "She saw a dog."), new(ChatRole.User, "The dog") };
        var response = await fx.Client.GetResponseAsync(messages, new ChatOptions { MaxOutputTokens = 60, Temperature = 0 });

        var prompt = ChatTemplates.Render(ChatTemplateKind.Plain,
            [new(ChatTurnRole.User, "Lily went to the park."), new(ChatTurnRole.Assistant, "She saw a dog."), new(ChatTurnRole.User, "The dog")]);
        Assert.Equal("Lily went to the park.\nShe saw a dog.\nThe dog", prompt.Text);
        var reference = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer).Complete(prompt.Text, new GenerationOptions { MaxNewTokens = 60 });

        Assert.Equal(reference.Text, response.Text);
        Assert.Equal(reference.Stats.NewTokens, response.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task Cancelling_after_the_first_update_stops_generation_within_a_round()
    {
        long generated = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (i, l) => { if (i.Meter.Name == BeagleMetrics.MeterName && i.Name == "beagle.generated_tokens") l.EnableMeasurementEvents(i); };
        listener.SetMeasurementEventCallback<long>((i, value, tags, _) =>
        {
            foreach (var t in tags) if (t.Key == "beagle.model" && (string?)t.Value == fx.ModelId) Interlocked.Add(ref generated, value);
        });
        listener.Start();

        using var cts = new CancellationTokenSource();
        int updates = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var u in fx.Client.GetStreamingResponseAsync(Story(), new ChatOptions { MaxOutputTokens = 500 }, cts.Token))
            {
                updates++;
                cts.Cancel();
            }
        });
        listener.RecordObservableInstruments();
        Assert.Equal(1, updates);
        // Generation may run at most the stream's buffer (16 one-token rounds here) plus a round ahead of the reader,
        // however late the cancellation arrives: far fewer than the 500 asked for.
        Assert.InRange(Interlocked.Read(ref generated), 1, 50);
    }

    [Fact]
    public async Task Concurrent_requests_give_the_same_outputs_as_sequential_ones()
    {
        string[] starts = ["Once upon a time", "Tom had a red ball", "The sun was hot", "Sara and Ben"];
        var options = new ChatOptions { MaxOutputTokens = 30 };
        var sequential = new List<string>();
        foreach (var s in starts) sequential.Add((await fx.Client.GetResponseAsync(Story(s), options)).Text);
        var parallel = await Task.WhenAll(starts.Select(s => Task.Run(() => fx.Client.GetResponseAsync(Story(s), options))));
        Assert.Equal(sequential, parallel.Select(r => r.Text));
    }

    [Fact]
    public async Task Seeded_sampling_is_reproducible_and_stop_sequences_end_the_answer()
    {
        var sampled = new ChatOptions { MaxOutputTokens = 30, Temperature = 1f, TopP = 0.9f, TopK = 40, Seed = 7 };
        var a = await fx.Client.GetResponseAsync(Story(), sampled);
        var b = await fx.Client.GetResponseAsync(Story(), sampled);
        Assert.Equal(a.Text, b.Text);

        var greedy = (await fx.Client.GetResponseAsync(Story(), new ChatOptions { MaxOutputTokens = 60 })).Text;
        var stop = greedy.Trim().Split(' ')[2];
        var stops = new List<string> { stop };
        var options = new ChatOptions { MaxOutputTokens = 60, StopSequences = stops };
        var stopped = await fx.Client.GetResponseAsync(Story(), options);
        Assert.Equal(greedy[..greedy.IndexOf(stop, StringComparison.Ordinal)], stopped.Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
        Assert.Equal([stop], stops);   // the caller's list is not changed
        Assert.Same(stops, options.StopSequences);
    }

    [Fact]
    public async Task Bad_settings_give_clear_argument_errors()
    {
        var e1 = await Assert.ThrowsAnyAsync<ArgumentException>(() => fx.Client.GetResponseAsync(Story(), new ChatOptions { MaxOutputTokens = -1 }));
        Assert.Contains("MaxOutputTokens", e1.Message);
        var e2 = await Assert.ThrowsAnyAsync<ArgumentException>(() => fx.Client.GetResponseAsync(Story(), new ChatOptions { TopP = 1.5f }));
        Assert.Contains("TopP", e2.Message);
        var e3 = await Assert.ThrowsAnyAsync<ArgumentException>(() => fx.Client.GetResponseAsync(Story(), new ChatOptions { Temperature = -0.5f }));
        Assert.Contains("Temperature", e3.Message);
        var e4 = await Assert.ThrowsAnyAsync<ArgumentException>(() => fx.Client.GetResponseAsync(Story(), new ChatOptions { MaxOutputTokens = 5000 }));
        Assert.Contains("context of 512", e4.Message);
        var e5 = await Assert.ThrowsAnyAsync<ArgumentException>(() => fx.Client.GetResponseAsync(Story(),
            new ChatOptions { AdditionalProperties = new() { ["tree_depth"] = "deep" } }));
        Assert.Contains("tree_depth", e5.Message);
    }

    [Fact]
    public async Task Speculation_without_a_draft_is_refused_and_can_be_turned_off()
    {
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => fx.Client.GetResponseAsync(Story(),
            new ChatOptions { MaxOutputTokens = 5, AdditionalProperties = new() { ["speculative"] = true } }));
        Assert.Contains("DraftPath", e.Message);
        var off = await fx.Client.GetResponseAsync(Story(), new ChatOptions { MaxOutputTokens = 5, AdditionalProperties = new() { ["speculative"] = false } });
        Assert.Equal(false, off.AdditionalProperties![BeagleChatClient.SpeculativeKey]);
    }

    [Fact]
    public async Task Function_calling_raises_NotSupportedException()
    {
        var tool = AIFunctionFactory.Create(() => "sunny", "weather");
        var e = await Assert.ThrowsAsync<NotSupportedException>(() => fx.Client.GetResponseAsync(Story(), new ChatOptions { Tools = [tool] }));
        Assert.Contains("function calling", e.Message);
        var history = new List<ChatMessage>
        {
            new(ChatRole.Assistant, [new FunctionCallContent("c1", "weather")]),
            new(ChatRole.Tool, [new FunctionResultContent("c1", "sunny")]),
        };
        await Assert.ThrowsAsync<NotSupportedException>(() => fx.Client.GetResponseAsync(history));
    }

    [Fact]
    public async Task Instructions_become_the_system_text_and_inputs_are_not_mutated()
    {
        var messages = Story("Tim ran");
        var options = new ChatOptions { MaxOutputTokens = 20, Instructions = "Once upon a time there was a boy." };
        var response = await fx.Client.GetResponseAsync(messages, options);
        var reference = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer)
            .Complete("Once upon a time there was a boy.\nTim ran", new GenerationOptions { MaxNewTokens = 20 });
        Assert.Equal(reference.Text, response.Text);
        Assert.Single(messages);
        Assert.Null(options.StopSequences);
        Assert.Null(options.AdditionalProperties);
    }

    [Fact]
    public void GetService_returns_metadata_and_the_client()
    {
        var meta = fx.Client.GetService<ChatClientMetadata>();
        Assert.NotNull(meta);
        Assert.Equal("beagle", meta.ProviderName);
        Assert.Equal(fx.ModelId, meta.DefaultModelId);
        Assert.Same(fx.Client, fx.Client.GetService<BeagleChatClient>());
        Assert.Same(fx.Client, fx.Client.GetService<IChatClient>());
        Assert.Null(fx.Client.GetService<string>());
    }
}

public sealed class EngineQueueTests
{
    [Fact]
    public async Task A_full_queue_rejects_at_once_with_EngineBusyException_and_serves_the_queued_request_later()
    {
        await using var provider = new BeagleEngineProvider(StoriesChatFixture.Options(queueCapacity: 1));
        var client = new BeagleChatClient(provider);
        var engine = await provider.GetReadyEngineAsync();
        List<ChatMessage> Story() => [new ChatMessage(ChatRole.User, "Once upon a time")];
        // The worker is held by a running request until released, so "at once" means "while it still runs", not a time.
        using var release = new ManualResetEventSlim();
        using var running = new ManualResetEventSlim();
        var blocker = engine.RunAsync((_, _) => { running.Set(); release.Wait(TimeSpan.FromSeconds(30)); return 1; });
        Assert.True(running.Wait(TimeSpan.FromSeconds(30)), "the worker never started the first request");
        var queued = client.GetResponseAsync(Story(), new ChatOptions { MaxOutputTokens = 8 });   // takes the one waiting place
        for (int i = 0; engine.QueueDepth < 2; i++)
        {
            Assert.True(i < 3000, "the second request never reached the queue");
            await Task.Delay(10);
        }

        var busy = await Assert.ThrowsAsync<EngineBusyException>(() => client.GetResponseAsync(Story(), new ChatOptions { MaxOutputTokens = 8 }));
        Assert.Contains("queue is full", busy.Message);
        Assert.False(blocker.IsCompleted);   // rejected while the running request still holds the worker
        Assert.False(queued.IsCompleted);
        Assert.Equal(2, engine.QueueDepth);   // the rejection took no place

        release.Set();
        Assert.Equal(1, await blocker);
        Assert.Equal(8, (await queued).Usage!.OutputTokenCount);   // the waiting request is served once the worker is free
    }
}
