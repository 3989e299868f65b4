using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using Beagle.Server;
using Beagle.Tests.Infrastructure;
using OpenAI;
using OpenAI.Chat;
using Xunit;

namespace Beagle.Tests.Server;

/// <summary>A server with small limits: queue capacity 1, 8 KiB bodies, max_tokens up to 100, one prompt per request.</summary>
public sealed class LimitedServerFixture : ServerFixture
{
    protected override int QueueCapacity => 1;
    protected override BeagleServerOptions Server => new() { Port = 0, MaxRequestBytes = 8192, MaxTokensLimit = 100, MaxPromptsPerRequest = 1 };
}

/// <summary>A server over stories5M, whose plain decoding of a story takes long enough for a client to leave mid-way.</summary>
public sealed class Stories5MServerFixture : ServerFixture
{
    protected override bool Stories5M => true;
}

/// <summary>A server that requires an API key.</summary>
public sealed class KeyedServerFixture : ServerFixture
{
    public const string Key = "test-key-0123456789";
    protected override BeagleServerOptions Server => new() { Port = 0, ApiKey = Key };
}

/// <summary>
/// Every kind of bad request gets its status and OpenAI's error shape with a message that says what is wrong, never
/// a 500, and the server goes on serving; a full queue is 429; a client that disconnects mid-stream frees its place.
/// </summary>
public sealed class ServerErrorTests(LimitedServerFixture fx) : IClassFixture<LimitedServerFixture>
{
    string Chat(string extra) => $$"""{"model":"{{fx.ModelId}}","messages":[{"role":"user","content":"Lily"}]{{extra}}}""";

    public static TheoryData<string, string, int, string?, string?, string> BadRequests() => new()
    {
        // path, body ({M} = the served model id, {CHAT} = a valid chat prefix), status, param, code, a fragment of the message
        { "chat", "{bad", 400, null, "invalid_json", "not valid JSON" },
        { "chat", "", 400, null, "invalid_json", "not valid JSON" },
        { "chat", "[1,2]", 400, null, "invalid_json", "must be a JSON object" },
        { "chat", """{"model":"{M}"}""", 400, "messages", null, "'messages' is required" },
        { "chat", """{"model":"{M}","messages":[]}""", 400, "messages", null, "empty" },
        { "chat", """{"model":"{M}","messages":"hi"}""", 400, "messages", null, "must be an array" },
        { "chat", """{"model":"{M}","messages":[{"role":"robot","content":"x"}]}""", 400, "messages", null, "got 'robot'" },
        { "chat", """{"model":"{M}","messages":[{"role":"tool","content":"x","tool_call_id":"1"}]}""", 400, "messages", "unsupported", "function calling" },
        { "chat", """{"model":"{M}","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x"}}]}]}""", 400, "messages", "unsupported", "only text" },
        { "chat", "{CHAT},\"temperature\":\"hot\"}", 400, "temperature", null, "must be a number" },
        { "chat", "{CHAT},\"temperature\":-1}", 400, "temperature", null, "Temperature must be a finite number >= 0" },
        { "chat", "{CHAT},\"top_p\":0}", 400, "top_p", null, "TopP (top_p) must be in (0, 1]" },
        { "chat", "{CHAT},\"max_tokens\":0}", 400, "max_tokens", null, "must be >= 1" },
        { "chat", "{CHAT},\"max_tokens\":101}", 400, "max_tokens", "max_tokens_limit", "above this server's limit of 100" },
        { "chat", "{CHAT},\"max_tokens\":2.5}", 400, "max_tokens", null, "must be an integer" },
        { "chat", "{CHAT},\"max_tokens\":4,\"max_completion_tokens\":5}", 400, "max_completion_tokens", null, "disagree" },
        { "chat", "{CHAT},\"stop\":[\"\"]}", 400, "stop", null, "must not contain empty strings" },
        { "chat", "{CHAT},\"stop\":5}", 400, "stop", null, "a string or an array of strings" },
        { "chat", "{CHAT},\"seed\":1.5}", 400, "seed", null, "must be an integer" },
        { "chat", "{CHAT},\"n\":2}", 400, "n", "unsupported", "'n' must be 1" },
        { "chat", "{CHAT},\"logprobs\":true}", 400, "logprobs", "unsupported", "not supported" },
        { "chat", "{CHAT},\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}", 400, "tools", "unsupported", "function calling" },
        { "chat", "{CHAT},\"response_format\":{\"type\":\"json_object\"}}", 400, "response_format", "unsupported", "JSON" },
        { "chat", "{CHAT},\"frequency_penalty\":0.5}", 400, null, "unsupported", "FrequencyPenalty (frequency_penalty) is not supported" },
        { "chat", "{CHAT},\"speculative\":\"maybe\"}", 400, "speculative", null, "\"speculative\" must be true or false" },
        { "chat", "{CHAT},\"stream_options\":{\"include_usage\":true}}", 400, "stream_options", null, "only allowed with \"stream\": true" },
        { "chat", """{"model":"gpt-4","messages":[{"role":"user","content":"x"}]}""", 404, "model", "model_not_found", "'gpt-4' does not exist" },
        { "completions", """{"model":"{M}"}""", 400, "prompt", null, "'prompt' is required" },
        { "completions", """{"model":"{M}","prompt":["Lily","Tom"]}""", 400, "prompt", "too_many_prompts", "holds 2 prompts but this server takes at most 1 per request (MaxPromptsPerRequest" },
        { "completions", """{"model":"{M}","prompt":[1,100000]}""", 400, "prompt", "invalid_token_id", "'prompt[1]' is token id 100000, outside this model's vocabulary" },
        { "completions", """{"model":"{M}","prompt":"x","echo":"yes"}""", 400, "echo", null, "true or false" },
        { "completions", """{"model":"{M}","prompt":"x","max_tokens":600}""", 400, "max_tokens", "max_tokens_limit", "above this server's limit" },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task A_bad_request_gets_its_status_and_an_OpenAI_error_and_the_server_serves_on(string endpoint, string body, int status, string? param, string? code, string fragment)
    {
        body = body.Replace("{CHAT}", Chat("")[..^1]).Replace("{M}", fx.ModelId);
        var (got, error) = await fx.Post(endpoint == "chat" ? "v1/chat/completions" : "v1/completions", body);
        AssertError(got, error, status, param, code, fragment);
        await AssertServing();
    }

    [Fact]
    public async Task A_prompt_longer_than_the_context_is_400_saying_by_how_much()
    {
        var prompt = string.Concat(Enumerable.Repeat("Lily and Tom play. ", 150));
        int tokens = TestAssets.StoriesTokenizer.Encode(prompt, addBos: true).Length;
        int context = TestAssets.Stories.Config.MaxSeqLen;
        Assert.True(tokens > context);
        foreach (var (path, body) in new[]
        {
            ("v1/completions", (object)new { model = fx.ModelId, prompt }),
            ("v1/chat/completions", new { model = fx.ModelId, messages = new[] { new { role = "user", content = prompt } } }),
        })
        {
            var (status, error) = await fx.Post(path, body);
            AssertError(status, error, 400, path.Contains("chat") ? "messages" : "prompt", "context_length_exceeded",
                $"the prompt has {tokens} tokens but the model's context is {context} tokens");
            Assert.Contains($"shorten it by {tokens - (context - 1)} tokens", error.GetProperty("error").GetProperty("message").GetString());
        }
        await AssertServing();
    }

    [Fact]
    public async Task A_body_over_the_size_limit_is_413_with_or_without_a_content_length()
    {
        var big = Chat($",\"user\":\"{new string('x', 9000)}\"");
        var (status, error) = await fx.Post("v1/chat/completions", big);
        AssertError(status, error, 413, null, "request_too_large", "larger than this server's limit of 8192 bytes");

        // Chunked: no Content-Length, so the limit is found while reading.
        using var chunked = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes(big))) };
        chunked.Headers.TransferEncodingChunked = true;
        using var response = await fx.Http.SendAsync(chunked);
        using var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        AssertError((int)response.StatusCode, doc.RootElement, 413, null, "request_too_large", "larger than this server's limit");
        await AssertServing();
    }

    [Fact]
    public async Task Unknown_routes_and_models_are_404_in_OpenAI_shape()
    {
        using var r1 = await fx.Http.GetAsync("v1/engines");
        using var d1 = JsonDocument.Parse(await r1.Content.ReadAsStringAsync());
        AssertError((int)r1.StatusCode, d1.RootElement, 404, null, "unknown_route", "no route GET /v1/engines");
        using var r2 = await fx.Http.GetAsync("v1/models/gpt-4");
        using var d2 = JsonDocument.Parse(await r2.Content.ReadAsStringAsync());
        AssertError((int)r2.StatusCode, d2.RootElement, 404, "model", "model_not_found", "'gpt-4' does not exist");
        using var models = JsonDocument.Parse(await fx.Http.GetStringAsync("v1/models"));
        Assert.Equal(fx.ModelId, models.RootElement.GetProperty("data")[0].GetProperty("id").GetString());
        Assert.Equal(fx.ModelId, JsonDocument.Parse(await fx.Http.GetStringAsync($"v1/models/{fx.ModelId}")).RootElement.GetProperty("id").GetString());
    }

    [Fact]
    public async Task A_full_queue_is_429_with_retry_after_and_not_ready_then_the_queued_request_completes()
    {
        var engine = fx.Provider.Engine;
        using var gate = new ManualResetEventSlim();
        // Occupies the engine (capacity 1: one running, one waiting) until the gate opens.
        var blocker = engine.RunAsync((_, _) => { gate.Wait(TimeSpan.FromSeconds(60)); return 0; });
        try
        {
            Assert.Equal(1, await fx.WaitForQueueDepth(1));
            var queued = fx.Post("v1/completions", new { model = fx.ModelId, prompt = "Lily", max_tokens = 4 });
            Assert.Equal(2, await fx.WaitForQueueDepth(2));

            var (status, error) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt = "Tom", max_tokens = 4 });
            AssertError(status, error, 429, null, "queue_full", "queue is full");
            using (var ready = await fx.Http.GetAsync("health/ready"))
                Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
            using (var busy = await fx.Http.PostAsync("v1/completions", new StringContent($$"""{"prompt":"Tom","max_tokens":4}""")))
            {
                Assert.Equal(429, (int)busy.StatusCode);
                Assert.Equal("1", busy.Headers.RetryAfter!.ToString());
            }

            gate.Set();
            await blocker;
            var (queuedStatus, _) = await queued;
            Assert.Equal(200, queuedStatus);
        }
        finally { gate.Set(); }
        using (var ready = await fx.Http.GetAsync("health/ready"))
            Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
        await AssertServing();
    }

    [Fact]
    public async Task A_client_that_gives_up_while_its_request_waits_in_the_queue_leaves_the_queue_at_once()
    {
        var engine = fx.Provider.Engine;
        using var gate = new ManualResetEventSlim();
        var blocker = engine.RunAsync((_, _) => { gate.Wait(TimeSpan.FromSeconds(60)); return 0; });
        try
        {
            Assert.Equal(1, await fx.WaitForQueueDepth(1));
            using var cts = new CancellationTokenSource();
            var body = JsonSerializer.Serialize(new { model = fx.ModelId, prompt = "Lily", max_tokens = 8, stream = true });
            var waiting = fx.Http.PostAsync("v1/completions", new StringContent(body, Encoding.UTF8, "application/json"), cts.Token);
            Assert.Equal(2, await fx.WaitForQueueDepth(2));
            cts.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);
            // Its place is free while the engine is still busy: the queue holds only the running work.
            Assert.Equal(1, await fx.WaitForQueueDepth(1));
        }
        finally { gate.Set(); }
        await blocker;
        Assert.Equal(0, await fx.WaitForQueueDepth(0));
        await AssertServing();
    }

    [Fact]
    public async Task A_wrong_method_is_405_in_OpenAI_shape()
    {
        using var r = await fx.Http.GetAsync("v1/chat/completions");
        using var d = JsonDocument.Parse(await r.Content.ReadAsStringAsync());
        AssertError((int)r.StatusCode, d.RootElement, 405, null, "method_not_allowed", "method GET is not allowed");
    }

    async Task AssertServing()
    {
        var (status, body) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt = "Lily", max_tokens = 4 });
        Assert.Equal(200, status);
        Assert.Equal(4, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    internal static void AssertError(int status, JsonElement body, int expectedStatus, string? param, string? code, string fragment)
    {
        Assert.True(expectedStatus == status, $"expected {expectedStatus}, got {status}: {body}");
        var e = body.GetProperty("error");
        Assert.Contains(fragment, e.GetProperty("message").GetString());
        Assert.Equal(JsonValueKind.String, e.GetProperty("type").ValueKind);
        Assert.Equal(param, e.GetProperty("param").ValueKind == JsonValueKind.Null ? null : e.GetProperty("param").GetString());
        if (code is not null) Assert.Equal(code, e.GetProperty("code").GetString());
    }
}

/// <summary>With an API key everyone without it gets 401 — except the liveness and readiness probes.</summary>
public sealed class ServerAuthTests(KeyedServerFixture fx) : IClassFixture<KeyedServerFixture>
{
    [Fact]
    public async Task Requests_without_the_key_are_401_and_with_it_are_served()
    {
        var body = new { model = fx.ModelId, prompt = "Lily", max_tokens = 4 };
        var (none, e1) = await fx.Post("v1/completions", body);
        ServerErrorTests.AssertError(none, e1, 401, null, "invalid_api_key", "missing API key");
        var (wrong, e2) = await fx.Post("v1/completions", body, apiKey: "test-key-0123456780");
        ServerErrorTests.AssertError(wrong, e2, 401, null, "invalid_api_key", "incorrect API key");
        var (right, ok) = await fx.Post("v1/completions", body, apiKey: KeyedServerFixture.Key);
        Assert.Equal(200, right);
        Assert.Equal(4, ok.GetProperty("usage").GetProperty("completion_tokens").GetInt32());

        Assert.Equal(HttpStatusCode.Unauthorized, (await fx.Http.GetAsync("metrics")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await fx.Http.GetAsync("v1/models")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await fx.Http.GetAsync("health/ready")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await fx.Http.GetAsync("health/live")).StatusCode);

        // The official SDK: the key is its bearer token; a wrong one surfaces as the SDK's 401.
        var good = new ChatClient(fx.ModelId, new ApiKeyCredential(KeyedServerFixture.Key), new OpenAIClientOptions { Endpoint = fx.V1 });
        ChatCompletion c = await good.CompleteChatAsync([new UserChatMessage("Lily")], new ChatCompletionOptions { MaxOutputTokenCount = 4 });
        Assert.Equal(4, c.Usage.OutputTokenCount);
        var bad = new ChatClient(fx.ModelId, new ApiKeyCredential("nope"), new OpenAIClientOptions { Endpoint = fx.V1 });
        var ex = await Assert.ThrowsAsync<ClientResultException>(() => bad.CompleteChatAsync([new UserChatMessage("Lily")]));
        Assert.Equal(401, ex.Status);
    }
}

/// <summary>A server with the default limits (a 1 MiB body).</summary>
public sealed class ServerLongPromptTests(ServerFixture fx) : IClassFixture<ServerFixture>
{
    [Fact]
    public async Task A_prompt_of_nearly_a_megabyte_is_refused_on_its_head_and_the_server_serves_on()
    {
        var prompt = string.Concat(Enumerable.Repeat("Lily and Tom play in the park. ", 30_000));   // 930,000 characters
        var (status, error) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt });
        ServerErrorTests.AssertError(status, error, 400, "prompt", "context_length_exceeded", "the prompt has more than");
        Assert.Contains($"of {prompt.Length} characters", error.GetProperty("error").GetProperty("message").GetString());

        var (ok, body) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt = "Lily", max_tokens = 4 });
        Assert.Equal(200, ok);
        Assert.Equal(4, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }
}

/// <summary>A client that leaves mid-stream: its generation stops and its place is free.</summary>
public sealed class ServerDisconnectTests(Stories5MServerFixture fx) : IClassFixture<Stories5MServerFixture>
{
    [Fact]
    public async Task A_client_that_disconnects_mid_stream_cancels_its_generation_and_frees_its_place()
    {
        double cancelled = await fx.Metric("beagle_server_cancelled_total"), generated = await fx.Metric("beagle_generated_tokens_total");
        // No draining: disposing the response closes the connection, as a client process that goes away does.
        using var http = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = fx.BaseAddress };
        var body = JsonSerializer.Serialize(new { model = fx.ModelId, prompt = "Once upon a time", max_tokens = 500, stream = true, speculative = false });
        using (var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") })
        using (var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            var first = await reader.ReadLineAsync();
            Assert.StartsWith("data: {", first);
        }
        Assert.Equal(0, await fx.WaitForQueueDepth(0));
        Assert.Equal(cancelled + 1, await fx.WaitForMetric("beagle_server_cancelled_total", c => c >= cancelled + 1));
        Assert.True(await fx.Metric("beagle_generated_tokens_total") - generated < 500, "the generation ran to its end although its client had left");
        await AssertServing();
    }

    async Task AssertServing()
    {
        var (status, body) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt = "Lily", max_tokens = 4 });
        Assert.Equal(200, status);
        Assert.Equal(4, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }
}
