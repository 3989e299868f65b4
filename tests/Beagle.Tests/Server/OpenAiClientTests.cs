#pragma warning disable SKEXP0010, OPENAI001   // the SK connector's custom-endpoint constructor and the SDK's Seed are marked experimental
using System.ClientModel;
using System.Text;
using Beagle.Decoding;
using Beagle.Tests.Infrastructure;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Microsoft.SemanticKernel.Connectors.OpenAI;
using OpenAI;
using OpenAI.Chat;
using Xunit;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using AiChatRole = Microsoft.Extensions.AI.ChatRole;
using SdkChatClient = OpenAI.Chat.ChatClient;
using SdkFinishReason = OpenAI.Chat.ChatFinishReason;

namespace Beagle.Tests.Server;

/// <summary>
/// Clients nobody here wrote — the official OpenAI SDK, Microsoft.Extensions.AI.OpenAI and Semantic Kernel's OpenAI
/// connector — talk to the server over loopback; every greedy answer equals the in-process chat client's (its own
/// engine) or plain decoding's, streamed or not, with stop sequences, and a cancelled stream frees its place.
/// </summary>
public sealed class OpenAiClientTests(ServerFixture fx) : IClassFixture<ServerFixture>
{
    const string Instructions = "A story for a child.";
    const string First = "Lily went to the park.", Reply = "She saw a big dog.", Next = "The dog";

    /// <summary>The conversation every client sends, in M.E.AI's terms (the in-process client's input).</summary>
    static List<AiChatMessage> Conversation() =>
        [new(AiChatRole.System, Instructions), new(AiChatRole.User, First), new(AiChatRole.Assistant, Reply), new(AiChatRole.User, Next)];

    static List<OpenAI.Chat.ChatMessage> SdkConversation() =>
        [new SystemChatMessage(Instructions), new UserChatMessage(First), new AssistantChatMessage(Reply), new UserChatMessage(Next)];

    static ChatHistory SkConversation()
    {
        var h = new ChatHistory(Instructions);
        h.AddUserMessage(First); h.AddAssistantMessage(Reply); h.AddUserMessage(Next);
        return h;
    }

    /// <summary>
    /// The clients' transport. By default an HTTP/1.1 client drains an abandoned response (up to 1 MB) to reuse the
    /// connection, so the server would see a cancelled stream as a slow reader; without draining, a client's
    /// cancellation closes the connection, as a process that exits or a browser tab that closes does.
    /// </summary>
    static readonly HttpClient Transport = new(new SocketsHttpHandler { MaxResponseDrainSize = 0 });

    SdkChatClient Sdk() => new(fx.ModelId, new ApiKeyCredential("unused"),
        new OpenAIClientOptions { Endpoint = fx.V1, Transport = new System.ClientModel.Primitives.HttpClientPipelineTransport(Transport) });

    OpenAIChatCompletionService SemanticKernel() => new(fx.ModelId, fx.V1, apiKey: "unused", httpClient: Transport);

    async Task<ChatResponse> Reference(int maxTokens, params string[] stop) =>
        await fx.InProcess.GetResponseAsync(Conversation(), new ChatOptions { MaxOutputTokens = maxTokens, Temperature = 0, StopSequences = stop.Length == 0 ? null : stop });

    /// <summary>A stop string the unconstrained answer contains after a few words, so that stopping changes the answer.</summary>
    async Task<string> StopInsideTheAnswer()
    {
        var full = (await Reference(40)).Text;
        var words = full.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(words.Length > 6, $"the reference answer is too short to cut: '{full}'");
        return " " + words[4];
    }

    [Fact]
    public async Task OpenAI_sdk_chat_equals_the_in_process_client()
    {
        var reference = await Reference(40);
        ChatCompletion completion = await Sdk().CompleteChatAsync(SdkConversation(), new ChatCompletionOptions { MaxOutputTokenCount = 40, Temperature = 0 });

        Assert.False(string.IsNullOrWhiteSpace(reference.Text));
        Assert.Equal(reference.Text, completion.Content[0].Text);
        Assert.Equal(reference.Usage!.OutputTokenCount, completion.Usage.OutputTokenCount);
        Assert.Equal(reference.Usage.InputTokenCount, completion.Usage.InputTokenCount);
        Assert.Equal(SdkFinishReason.Length, completion.FinishReason);
        Assert.Equal(fx.ModelId, completion.Model);
    }

    [Fact]
    public async Task OpenAI_sdk_streaming_equals_the_in_process_client_and_reports_usage()
    {
        var reference = await Reference(48);
        var text = new StringBuilder();
        ChatTokenUsage? usage = null;
        SdkFinishReason? finish = null;
        int updates = 0;
        await foreach (var u in Sdk().CompleteChatStreamingAsync(SdkConversation(), new ChatCompletionOptions { MaxOutputTokenCount = 48, Temperature = 0 }))
        {
            foreach (var part in u.ContentUpdate) text.Append(part.Text);
            usage ??= u.Usage;
            finish ??= u.FinishReason;
            updates++;
        }
        Assert.Equal(reference.Text, text.ToString());
        Assert.True(updates > 3, $"expected a stream of updates, got {updates}");
        Assert.Equal(48, usage!.OutputTokenCount);
        Assert.Equal(SdkFinishReason.Length, finish);
    }

    [Fact]
    public async Task OpenAI_sdk_stop_sequences_equal_the_in_process_client()
    {
        var stop = await StopInsideTheAnswer();
        var reference = await Reference(40, stop);
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 40, Temperature = 0 };
        options.StopSequences.Add(stop);
        ChatCompletion completion = await Sdk().CompleteChatAsync(SdkConversation(), options);

        Assert.Equal(reference.Text, completion.Content[0].Text);
        Assert.DoesNotContain(stop, completion.Content[0].Text);
        Assert.Equal(SdkFinishReason.Stop, completion.FinishReason);
        Assert.True(completion.Usage.OutputTokenCount < 40);
    }

    [Fact]
    public async Task MEAI_openai_client_equals_the_in_process_client_streamed_and_not_with_stop()
    {
        IChatClient client = Sdk().AsIChatClient();
        var stop = await StopInsideTheAnswer();
        foreach (var stops in new[] { null, new[] { stop } })
        {
            var options = new ChatOptions { MaxOutputTokens = 40, Temperature = 0, StopSequences = stops };
            var reference = await fx.InProcess.GetResponseAsync(Conversation(), options);
            var response = await client.GetResponseAsync(Conversation(), options);
            var streamed = new StringBuilder();
            await foreach (var u in client.GetStreamingResponseAsync(Conversation(), options)) streamed.Append(u.Text);

            Assert.Equal(reference.Text, response.Text);
            Assert.Equal(reference.Text, streamed.ToString());
            Assert.Equal(reference.Usage!.OutputTokenCount, response.Usage!.OutputTokenCount);
            Assert.Equal(reference.FinishReason, response.FinishReason);
        }
    }

    [Fact]
    public async Task Semantic_Kernel_openai_connector_equals_the_in_process_client_streamed_and_not_with_stop()
    {
        var sk = SemanticKernel();
        var stop = await StopInsideTheAnswer();
        foreach (var stops in new[] { null, new[] { stop } })
        {
            var reference = await Reference(40, stops ?? []);
            var settings = new OpenAIPromptExecutionSettings { MaxTokens = 40, Temperature = 0, StopSequences = stops };
            var message = await sk.GetChatMessageContentAsync(SkConversation(), settings);
            var streamed = new StringBuilder();
            await foreach (var u in sk.GetStreamingChatMessageContentsAsync(SkConversation(), settings)) streamed.Append(u.Content);

            Assert.Equal(reference.Text, message.Content);
            Assert.Equal(reference.Text, streamed.ToString());
        }
    }

    [Fact]
    public async Task Text_completions_equal_plain_decoding_streamed_and_not()
    {
        const string prompt = "Once upon a time, there was a little cat";
        var plain = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer).Complete(prompt, new GenerationOptions { MaxNewTokens = 60 });
        var (status, body) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt, max_tokens = 60, temperature = 0 });

        Assert.Equal(200, status);
        Assert.Equal(plain.Text, body.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal(plain.Stats.NewTokens, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(plain.Stats.PromptTokens, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        var beagle = body.GetProperty("beagle");
        // The server decodes speculatively with the bundled draft, and the answer is still plain decoding's.
        Assert.True(beagle.GetProperty("speculative").GetBoolean());
        Assert.True(beagle.GetProperty("draft_rounds").GetInt32() > 0);
        Assert.True(beagle.GetProperty("acceptance_length").GetDouble() > 1);
        Assert.True(beagle.GetProperty("accepted_draft_tokens").GetInt64() > 0);

        var streamed = new StringBuilder();
        System.Text.Json.JsonElement? final = null;
        await foreach (var data in Sse(new { model = fx.ModelId, prompt, max_tokens = 60, temperature = 0, stream = true }, "v1/completions"))
        {
            streamed.Append(data.GetProperty("choices")[0].GetProperty("text").GetString());
            if (data.GetProperty("choices")[0].GetProperty("finish_reason").ValueKind != System.Text.Json.JsonValueKind.Null) final = data;
        }
        Assert.Equal(plain.Text, streamed.ToString());
        Assert.Equal("length", final!.Value.GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.True(final.Value.GetProperty("beagle").GetProperty("speculative").GetBoolean());
    }

    [Fact]
    public async Task Metrics_are_prometheus_text_with_speed_acceptance_requests_queue_depth_and_batch_size()
    {
        var (status, body) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt = "Tom and Lily", max_tokens = 30 });
        Assert.Equal(200, status);
        var text = await fx.Http.GetStringAsync("metrics");

        Assert.Contains("# TYPE beagle_generation_acceptance_length histogram", text);
        Assert.Contains("# TYPE beagle_generated_tokens_total counter", text);
        Assert.Contains("# TYPE beagle_engine_queue_depth gauge", text);
        Assert.True(await fx.Metric("beagle_generation_acceptance_length_count") >= 1);
        // Speculative requests: tokens per target forward above 1 on average.
        Assert.True(await fx.Metric("beagle_generation_acceptance_length_sum") / await fx.Metric("beagle_generation_acceptance_length_count") > 1);
        Assert.True(await fx.Metric("beagle_generation_tokens_per_second_count") >= 1);
        Assert.True(await fx.Metric("beagle_generated_tokens_total") >= 30);
        Assert.True(await fx.Metric("beagle_server_requests_total", "endpoint=\"/v1/completions\",status=\"200\"") >= 1);
        Assert.Contains($"beagle_engine_queue_depth{{beagle_model=\"{fx.ModelId}\"}} 0", text);
        Assert.Contains($"beagle_engine_batch_size{{beagle_model=\"{fx.ModelId}\"}} 0", text);   // nothing decoding now
        Assert.Contains("process_resident_memory_bytes ", text);
    }

    [Fact]
    public async Task A_seeded_sampled_request_equals_the_in_process_client_with_the_same_seed()
    {
        var options = new ChatOptions { MaxOutputTokens = 40, Temperature = 0.8f, TopP = 0.9f, Seed = 7 };
        var reference = await fx.InProcess.GetResponseAsync(Conversation(), options);
        ChatCompletion a = await Sdk().CompleteChatAsync(SdkConversation(), new ChatCompletionOptions { MaxOutputTokenCount = 40, Temperature = 0.8f, TopP = 0.9f, Seed = 7 });
        Assert.Equal(reference.Text, a.Content[0].Text);
    }

    [Fact]
    public async Task Cancelling_through_each_client_cancels_the_generation_and_frees_its_place()
    {
        var sdk = Sdk();
        IChatClient meai = sdk.AsIChatClient();
        var sk = SemanticKernel();
        var streams = new Func<CancellationToken, IAsyncEnumerable<object>>[]
        {
            ct => sdk.CompleteChatStreamingAsync(SdkConversation(), new ChatCompletionOptions { MaxOutputTokenCount = 40 }, ct),
            ct => meai.GetStreamingResponseAsync(Conversation(), new ChatOptions { MaxOutputTokens = 40 }, ct),
            ct => sk.GetStreamingChatMessageContentsAsync(SkConversation(), new OpenAIPromptExecutionSettings { MaxTokens = 40 }, cancellationToken: ct),
        };
        var engine = fx.Provider.Engine;
        foreach (var stream in streams)
        {
            double cancelled = await fx.Metric("beagle_server_cancelled_total");
            // The engine is held busy, so the request is still waiting when its client cancels: the cancellation, not
            // the speed of a small model, decides whether it runs.
            using var gate = new ManualResetEventSlim();
            var blocker = engine.RunAsync((_, _) => { gate.Wait(TimeSpan.FromSeconds(60)); return 0; });
            try
            {
                Assert.Equal(1, await fx.WaitForQueueDepth(1));
                using var cts = new CancellationTokenSource();
                var reading = Task.Run(async () => { await foreach (var _ in stream(cts.Token)) { } });
                Assert.Equal(2, await fx.WaitForQueueDepth(2));
                cts.Cancel();
                await Assert.ThrowsAnyAsync<OperationCanceledException>(() => reading);
                Assert.Equal(1, await fx.WaitForQueueDepth(1));   // its place is free while the engine is still busy
            }
            finally { gate.Set(); }
            await blocker;
            Assert.Equal(0, await fx.WaitForQueueDepth(0));
            Assert.Equal(cancelled + 1, await fx.Metric("beagle_server_cancelled_total"));
        }
        ChatCompletion after = await sdk.CompleteChatAsync(SdkConversation(), new ChatCompletionOptions { MaxOutputTokenCount = 40, Temperature = 0 });
        Assert.Equal((await Reference(40)).Text, after.Content[0].Text);
    }

    /// <summary>The data events of a streamed response, up to [DONE] (which must come).</summary>
    async IAsyncEnumerable<System.Text.Json.JsonElement> Sse(object body, string path)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(System.Text.Json.JsonSerializer.Serialize(body), Encoding.UTF8, "application/json") };
        using var response = await fx.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(200, (int)response.StatusCode);
        Assert.StartsWith("text/event-stream", response.Content.Headers.ContentType!.ToString());
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        bool done = false;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            if (line == "data: [DONE]") { done = true; break; }
            yield return System.Text.Json.JsonDocument.Parse(line[6..]).RootElement.Clone();
        }
        Assert.True(done, "the stream ended without data: [DONE]");
    }
}
