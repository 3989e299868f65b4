using System.Text;
using System.Text.Json;
using Beagle.Decoding;
using Beagle.SemanticKernel;
using Beagle.Server;
using Microsoft.Extensions.AI;
using Xunit;

namespace Beagle.Tests.Server;

/// <summary>
/// <c>POST /v1/completions</c> with each of OpenAI's prompt forms — a string, strings, token ids, arrays of token ids —
/// over loopback with raw JSON (the official OpenAI .NET SDK keeps its legacy completions client internal). Every choice
/// equals that prompt's single request to an in-process engine of its own, greedy and seeded; the prompts of one request
/// are handed to the engine together (all in its queue at once, so it batches them as concurrent requests); bad forms
/// are 400s naming the index, and the server serves on.
/// </summary>
public sealed class CompletionPromptTests(ServerFixture fx) : IClassFixture<ServerFixture>
{
    static readonly string[] Prompts = ["Once upon a time", "Lily and Tom went to the park", "The little dog"];

    /// <summary>A prompt's single request to the in-process reference engine, with the options the server maps from the same fields.</summary>
    async Task<GenerationResult> Single(string prompt, int maxTokens, float temperature = 0, int? seed = null)
    {
        var engine = await fx.ReferenceProvider.GetReadyEngineAsync();
        var gen = ChatRequestMapper.ToGeneration(new ChatOptions { MaxOutputTokens = maxTokens, Temperature = temperature, Seed = seed }, [], 32,
            engine.TargetConfig.MaxSeqLen, engine.Draft is not null);
        return await engine.CompleteAsync(prompt, gen);
    }

    /// <summary>The prompt's ids as the server encodes its text (with BOS).</summary>
    static int[] Ids(string prompt) => Infrastructure.TestAssets.StoriesTokenizer.Encode(prompt, addBos: true);

    static void AssertChoices(JsonElement body, IReadOnlyList<GenerationResult> expected)
    {
        var choices = body.GetProperty("choices");
        Assert.Equal(expected.Count, choices.GetArrayLength());
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.Equal(i, choices[i].GetProperty("index").GetInt32());
            Assert.Equal(expected[i].Text, choices[i].GetProperty("text").GetString());
            Assert.Equal(expected[i].Stats.FinishReason is FinishReason.Length ? "length" : "stop", choices[i].GetProperty("finish_reason").GetString());
            Assert.Equal(expected[i].Stats.FinishReason.ToString(), choices[i].GetProperty("beagle").GetProperty("finish_reason").GetString());
        }
        var usage = body.GetProperty("usage");
        Assert.Equal(expected.Sum(e => e.Stats.PromptTokens), usage.GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(expected.Sum(e => e.Stats.NewTokens), usage.GetProperty("completion_tokens").GetInt32());
        Assert.Equal(expected.Sum(e => e.Stats.PromptTokens + e.Stats.NewTokens), usage.GetProperty("total_tokens").GetInt32());
    }

    [Fact]
    public async Task Each_prompt_form_yields_one_choice_per_prompt_equal_to_its_single_request()
    {
        var expected = new List<GenerationResult>();
        foreach (var p in Prompts) expected.Add(await Single(p, 24));
        Assert.NotEqual(expected[0].Text, expected[1].Text);

        var forms = new (string Name, object Prompt, GenerationResult[] Expected)[]
        {
            ("a string", Prompts[1], [expected[1]]),
            ("an array of strings", Prompts, [.. expected]),
            ("an array of token ids", Ids(Prompts[2]), [expected[2]]),
            ("an array of arrays of token ids", Prompts.Select(Ids).ToArray(), [.. expected]),
        };
        foreach (var (name, prompt, want) in forms)
        {
            var (status, body) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt, max_tokens = 24, temperature = 0 });
            Assert.True(status == 200, $"{name}: {status} {body}");
            AssertChoices(body, want);
            // The top-level "beagle" object is a single prompt's; with several, each choice carries its own.
            Assert.Equal(want.Length == 1, body.TryGetProperty("beagle", out _));
        }
    }

    [Fact]
    public async Task Seeded_sampled_prompts_each_equal_their_single_request_and_echo_prepends_each_prompt()
    {
        var expected = new List<GenerationResult>();
        foreach (var p in Prompts) expected.Add(await Single(p, 20, temperature: 0.9f, seed: 11));
        var (status, body) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt = Prompts, max_tokens = 20, temperature = 0.9, seed = 11 });
        Assert.Equal(200, status);
        AssertChoices(body, expected);

        // echo: each choice opens with its own prompt; token-id prompts echo their decoded text.
        var (s2, echoed) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt = Prompts.Select(Ids).ToArray(), max_tokens = 20, temperature = 0.9, seed = 11, echo = true });
        Assert.Equal(200, s2);
        for (int i = 0; i < Prompts.Length; i++)
            Assert.Equal(Prompts[i] + expected[i].Text, echoed.GetProperty("choices")[i].GetProperty("text").GetString());
    }

    [Fact]
    public async Task A_request_s_prompts_wait_in_the_engine_s_queue_together_and_each_equals_its_single_request()
    {
        var engine = fx.Provider.Engine;
        using var gate = new ManualResetEventSlim();
        var blocker = engine.RunAsync((_, _) => { gate.Wait(TimeSpan.FromSeconds(60)); return 0; });
        Task<(int, JsonElement)> request;
        try
        {
            Assert.Equal(1, await fx.WaitForQueueDepth(1));
            request = fx.Post("v1/completions", new { model = fx.ModelId, prompt = Prompts, max_tokens = 24, temperature = 0 });
            // All three are in the queue while the engine is busy: handed over at once, not one after the other.
            Assert.Equal(1 + Prompts.Length, await fx.WaitForQueueDepth(1 + Prompts.Length));
        }
        finally { gate.Set(); }
        await blocker;
        var (status, body) = await request;
        Assert.Equal(200, status);
        var expected = new List<GenerationResult>();
        foreach (var p in Prompts) expected.Add(await Single(p, 24));
        AssertChoices(body, expected);
    }

    [Fact]
    public async Task A_request_whose_prompts_do_not_all_fit_the_queue_is_429_and_leaves_none_behind()
    {
        var engine = fx.Provider.Engine;
        using var gate = new ManualResetEventSlim();
        var blocker = engine.RunAsync((_, _) => { gate.Wait(TimeSpan.FromSeconds(60)); return 0; });
        Task<(int, JsonElement)> first;
        try
        {
            Assert.Equal(1, await fx.WaitForQueueDepth(1));
            // 15 of the queue's 16 places taken; the next request's first prompt gets the last place, its second none.
            first = fx.Post("v1/completions", new { model = fx.ModelId, prompt = Enumerable.Repeat("Lily", 15).ToArray(), max_tokens = 2 });
            Assert.Equal(16, await fx.WaitForQueueDepth(16));
            var (status, error) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt = new[] { "Tom", "Sue" }, max_tokens = 2 });
            ServerErrorTests.AssertError(status, error, 429, null, "queue_full", "queue is full");
            Assert.Equal(16, await fx.WaitForQueueDepth(16));   // the admitted first prompt left with its request
        }
        finally { gate.Set(); }
        await blocker;
        var (ok, body) = await first;
        Assert.Equal(200, ok);
        Assert.Equal(15, body.GetProperty("choices").GetArrayLength());
        Assert.Equal(0, await fx.WaitForQueueDepth(0));
    }

    [Fact]
    public async Task Streaming_several_prompts_tags_chunks_with_their_index_ends_each_choice_once_and_sums_usage()
    {
        var expected = new List<GenerationResult>();
        foreach (var p in Prompts) expected.Add(await Single(p, 24));
        foreach (var prompt in new object[] { Prompts, Prompts.Select(Ids).ToArray() })
        {
            var texts = Prompts.Select(_ => new StringBuilder()).ToArray();
            var finishes = new int[Prompts.Length];
            JsonElement? usage = null;
            await foreach (var data in Sse(new { model = fx.ModelId, prompt, max_tokens = 24, temperature = 0, stream = true, stream_options = new { include_usage = true } }))
            {
                if (data.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object) { usage = u; continue; }
                var choice = data.GetProperty("choices")[0];
                Assert.Equal(1, data.GetProperty("choices").GetArrayLength());
                int index = choice.GetProperty("index").GetInt32();
                Assert.Equal(0, finishes[index]);   // nothing after a choice's end
                texts[index].Append(choice.GetProperty("text").GetString());
                if (choice.GetProperty("finish_reason").ValueKind != JsonValueKind.Null)
                {
                    finishes[index]++;
                    Assert.True(data.TryGetProperty("beagle", out _), "a choice's end carries its beagle object");
                }
            }
            for (int i = 0; i < Prompts.Length; i++)
            {
                Assert.Equal(expected[i].Text, texts[i].ToString());
                Assert.Equal(1, finishes[i]);
            }
            Assert.Equal(expected.Sum(e => e.Stats.NewTokens), usage!.Value.GetProperty("completion_tokens").GetInt32());
            Assert.Equal(expected.Sum(e => e.Stats.PromptTokens), usage.Value.GetProperty("prompt_tokens").GetInt32());
        }
    }

    public static TheoryData<string, int, string?, string?, string> BadPrompts() => new()
    {
        // the "prompt" value and the rest of the body, status, param, code, a fragment of the message
        { "[]", 400, "prompt", null, "'prompt' is an empty array" },
        { "[[]]", 400, "prompt", null, "'prompt[0]' is an empty array of token ids" },
        { "[[1,2],[]]", 400, "prompt", null, "'prompt[1]' is an empty array of token ids" },
        { "[1,99999]", 400, "prompt", "invalid_token_id", "'prompt[1]' is token id 99999, outside this model's vocabulary (ids 0 to 511)" },
        { "[[1,2],[1,-3]]", 400, "prompt", "invalid_token_id", "'prompt[1][1]' is token id -3, outside this model's vocabulary" },
        { "[1,\"a\"]", 400, "prompt", null, "'prompt[1]' must be a token id (an integer), got \"a\"" },
        { "[1,2.5]", 400, "prompt", null, "'prompt[1]' must be a token id (an integer), got 2.5" },
        { "[[1],[2,1e3]]", 400, "prompt", null, "'prompt[1][1]' must be a token id (an integer), got 1e3" },
        { "[\"a\",1]", 400, "prompt", null, "'prompt[1]' must be a string like 'prompt[0]'" },
        { "[[1],\"a\"]", 400, "prompt", null, "'prompt[1]' must be an array of token ids like 'prompt[0]'" },
        { "[true]", 400, "prompt", null, "'prompt[0]' is a boolean" },
        { "{\"text\":\"a\"}", 400, "prompt", null, "'prompt' must be a string, an array of strings, an array of token ids or an array of arrays of token ids, got an object" },
        { "[" + string.Join(",", Enumerable.Repeat("\"a\"", 17)) + "]", 400, "prompt", "too_many_prompts", "holds 17 prompts but this server takes at most 16" },
        { "[" + string.Join(",", Enumerable.Repeat("[1]", 17)) + "]", 400, "prompt", "too_many_prompts", "holds 17 prompts" },
        { "[" + string.Join(",", Enumerable.Repeat("1", 600)) + "]", 400, "prompt", "context_length_exceeded", "'prompt' has 600 tokens but the model's context is 512 tokens" },
        { "[\"a\",\"" + string.Concat(Enumerable.Repeat("Lily and Tom play. ", 150)) + "\"]", 400, "prompt", "context_length_exceeded", "'prompt[1]' has " },
        { "\"a\",\"suffix\":\"!\"", 400, "suffix", "unsupported", "'suffix' (insertion) is not supported" },
        { "\"a\",\"best_of\":2", 400, "best_of", "unsupported", "'best_of' must be 1" },
        { "\"a\",\"logprobs\":1", 400, "logprobs", "unsupported", "'logprobs' is not supported" },
        { "[\"a\",\"b\"],\"n\":2", 400, "n", "unsupported", "'n' must be 1" },
    };

    [Theory]
    [MemberData(nameof(BadPrompts))]
    public async Task A_bad_prompt_form_is_400_naming_the_index_and_the_server_serves_on(string prompt, int status, string? param, string? code, string fragment)
    {
        var (got, error) = await fx.Post("v1/completions", $$"""{"model":"{{fx.ModelId}}","prompt":{{prompt}},"max_tokens":4}""");
        ServerErrorTests.AssertError(got, error, status, param, code, fragment);
        var (ok, body) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt = new[] { "Lily", "Tom" }, max_tokens = 4 });
        Assert.Equal(200, ok);
        Assert.Equal(8, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Fact]
    public async Task Fields_with_their_neutral_values_are_accepted()
    {
        var expected = await Single(Prompts[0], 8);
        var (status, body) = await fx.Post("v1/completions", new { model = fx.ModelId, prompt = Prompts[0], max_tokens = 8, suffix = "", best_of = 1, logprobs = 0, n = 1, echo = false });
        Assert.Equal(200, status);
        AssertChoices(body, [expected]);
    }

    [Fact]
    public void Max_prompts_per_request_is_validated_and_may_not_exceed_the_queue()
    {
        Assert.Contains(new BeagleServerOptions { MaxPromptsPerRequest = 0 }.Problems(), p => p.Contains("MaxPromptsPerRequest must be >= 1, got 0"));
        var e = Assert.Throws<ArgumentException>(() => BeagleServer.Create(o => { fx.Configure(o); o.QueueCapacity = 4; },
            new BeagleServerOptions { Port = 0, MaxPromptsPerRequest = 5 }, logging: _ => { }));
        Assert.Contains("MaxPromptsPerRequest (5) is above the model's QueueCapacity (4)", e.Message);
    }

    /// <summary>The data events of a streamed completion, up to [DONE] (which must come).</summary>
    async IAsyncEnumerable<JsonElement> Sse(object body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(JsonSerializer.Serialize(body), Encoding.UTF8, "application/json") };
        using var response = await fx.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(200, (int)response.StatusCode);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        bool done = false;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            if (line == "data: [DONE]") { done = true; break; }
            yield return JsonDocument.Parse(line[6..]).RootElement.Clone();
        }
        Assert.True(done, "the stream ended without data: [DONE]");
    }
}
