using System.Text.Json;
using Beagle.SemanticKernel;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;

using Xunit;

namespace Beagle.Tests.SemanticKernel;

/// <summary>Settings mapping end to end, without a model: SK settings -> ChatOptions -> GenerationOptions.</summary>
public sealed class SettingsMappingTests
{
    /// <summary>Records the ChatOptions it receives.</summary>
    sealed class RecordingChatClient : IChatClient
    {
        public ChatOptions? Received;
        public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
        {
            Received = options;
            return Task.FromResult(new ChatResponse(new ChatMessage(ChatRole.Assistant, "ok")));
        }
        public IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
            => throw new NotSupportedException();
        public object? GetService(Type serviceType, object? serviceKey = null) => serviceType == typeof(ChatClientMetadata) ? new ChatClientMetadata("rec", null, "rec") : null;
        public void Dispose() { }
    }

    static Beagle.Decoding.GenerationOptions Map(ChatOptions? o, bool hasDraft = true) => ChatRequestMapper.ToGeneration(o, [], 256, 512, hasDraft);

    [Fact]
    public void Typed_settings_map_to_generation_options()
    {
        var s = new BeaglePromptExecutionSettings
        {
            MaxTokens = 17, Temperature = 0.7f, TopP = 0.9f, TopK = 12, Seed = 3, StopSequences = ["The end"],
            Speculative = true, TreeTokens = 24, TreeDepth = 5, TreeTopK = 8, TreeMinProb = 0.05,
        };
        var g = Map(BeaglePromptExecutionSettings.FromExecutionSettings(s).ToChatOptions());
        Assert.Equal(17, g.MaxNewTokens);
        Assert.Equal(new Beagle.Decoding.SamplingOptions { Temperature = 0.7f, TopP = 0.9f, TopK = 12, Seed = 3 }, g.Sampling);
        Assert.Equal(["The end"], g.StopStrings);
        Assert.Equal(new Beagle.Decoding.SpeculativeOptions { TreeTokens = 24, TreeDepth = 5, TreeTopK = 8, TreeMinProb = 0.05 }, g.Speculative);
    }

    [Fact]
    public void ExtensionData_dictionary_converts_through_a_json_round_trip()
    {
        var s = new PromptExecutionSettings
        {
            ServiceId = "beagle",
            ExtensionData = new Dictionary<string, object>
            {
                ["max_tokens"] = 9, ["temperature"] = 0.2, ["top_p"] = 0.5, ["top_k"] = 4, ["seed"] = 11,
                ["stop_sequences"] = new[] { "!" }, ["speculative"] = false, ["tree_depth"] = 3, ["custom"] = "x",
            },
        };
        var b = BeaglePromptExecutionSettings.FromExecutionSettings(s);
        Assert.Equal((9, 0.2f, 0.5f, 4, 11L, false, 3), (b.MaxTokens!.Value, b.Temperature!.Value, b.TopP!.Value, b.TopK!.Value, b.Seed!.Value, b.Speculative!.Value, b.TreeDepth!.Value));
        Assert.Equal(["!"], b.StopSequences!);
        Assert.Equal("beagle", b.ServiceId);
        Assert.True(b.ExtensionData!.ContainsKey("custom"));
        var g = Map(b.ToChatOptions());
        Assert.True(g.Speculative!.Disabled);
        Assert.Equal(3, g.Speculative.TreeDepth);
        Assert.Equal(9, g.MaxNewTokens);
    }

    [Fact]
    public async Task ChatOptions_AdditionalProperties_arrive_through_AsChatCompletionService()
    {
        var recorder = new RecordingChatClient();
        var service = recorder.AsChatCompletionService();
        var history = new ChatHistory("Once upon a time");
        await service.GetChatMessageContentsAsync(history, new BeaglePromptExecutionSettings { MaxTokens = 21, TopP = 0.8f, TreeTokens = 32, Speculative = false });
        var o = recorder.Received!;
        Assert.Equal(21, o.MaxOutputTokens);
        Assert.Equal(0.8f, o.TopP);
        var g = Map(o);
        Assert.Equal(32, g.Speculative!.TreeTokens);
        Assert.True(g.Speculative.Disabled);

        // The same through an untyped ExtensionData dictionary (values arrive as JsonElement or boxed numbers).
        await service.GetChatMessageContentsAsync(history, new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["max_tokens"] = 5, ["tree_topk"] = 6, ["speculative"] = true } });
        g = Map(recorder.Received);
        Assert.Equal(5, g.MaxNewTokens);
        Assert.Equal(6, g.Speculative!.TreeTopK);
        Assert.False(g.Speculative.Disabled);
    }

    [Fact]
    public void Json_element_values_are_read()
    {
        var props = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>("""{"tree_tokens": 40, "tree_min_prob": 0.02, "speculative": "false"}""")!;
        var o = new ChatOptions { AdditionalProperties = new(props.ToDictionary(p => p.Key, p => (object?)p.Value)) };
        var g = Map(o);
        Assert.Equal(40, g.Speculative!.TreeTokens);
        Assert.Equal(0.02, g.Speculative.TreeMinProb);
        Assert.True(g.Speculative.Disabled);
    }

    [Fact]
    public void Without_a_draft_there_is_no_speculation_and_defaults_are_bounded()
    {
        var g = Map(null, hasDraft: false);
        Assert.Null(g.Speculative);
        Assert.Equal(256, g.MaxNewTokens);
        Assert.True(g.Sampling.IsGreedy);
        Assert.Throws<InvalidOperationException>(() => Map(new ChatOptions { AdditionalProperties = new() { ["speculative"] = true } }, hasDraft: false));
    }

    [Fact]
    public void Bad_settings_give_clear_argument_errors()
    {
        var e1 = Assert.ThrowsAny<ArgumentException>(() => BeaglePromptExecutionSettings.FromExecutionSettings(new BeaglePromptExecutionSettings { MaxTokens = -3 }));
        Assert.Contains("max_tokens", e1.Message);
        var e2 = Assert.ThrowsAny<ArgumentException>(() => BeaglePromptExecutionSettings.FromExecutionSettings(new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["top_p"] = 1.5 } }));
        Assert.Contains("top_p", e2.Message);
        var e3 = Assert.ThrowsAny<ArgumentException>(() => BeaglePromptExecutionSettings.FromExecutionSettings(new BeaglePromptExecutionSettings { Temperature = -1 }));
        Assert.Contains("temperature", e3.Message);
        var e4 = Assert.ThrowsAny<ArgumentException>(() => BeaglePromptExecutionSettings.FromExecutionSettings(new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["max_tokens"] = "many" } }));
        Assert.Contains("invalid Beagle execution settings", e4.Message);
        Assert.ThrowsAny<ArgumentException>(() => Map(new ChatOptions { TopP = 0 }));
        var e5 = Assert.ThrowsAny<ArgumentException>(() => BeaglePromptExecutionSettings.FromExecutionSettings(new BeaglePromptExecutionSettings { TreeMinProb = 1.5 }));
        Assert.Contains("tree_min_prob", e5.Message);
        var e6 = Assert.ThrowsAny<ArgumentException>(() => Map(new ChatOptions { AdditionalProperties = new() { ["tree_min_prob"] = "sure" } }));
        Assert.Contains("tree_min_prob", e6.Message);
    }

    [Fact]
    public void Frozen_settings_cannot_change_and_clone_copies_lists()
    {
        var s = new BeaglePromptExecutionSettings { StopSequences = ["a"], TreeDepth = 2 };
        var c = (BeaglePromptExecutionSettings)s.Clone();
        c.StopSequences!.Add("b");
        Assert.Single(s.StopSequences);
        s.Freeze();
        Assert.Throws<InvalidOperationException>(() => s.TopK = 3);
    }

    public static TheoryData<string, object, ChatOptions> Unhonourable => new()
    {
        { "response_format", "json_object", new ChatOptions { ResponseFormat = ChatResponseFormat.Json } },
        { "response_format", JsonSerializer.Deserialize<JsonElement>("{\"type\": \"json_schema\", \"json_schema\": {\"name\": \"story\"}}"), new ChatOptions { ResponseFormat = ChatResponseFormat.Json } },
        { "frequency_penalty", 0.5, new ChatOptions { FrequencyPenalty = 0.5f } },
        { "presence_penalty", JsonSerializer.Deserialize<JsonElement>("1.2"), new ChatOptions { PresencePenalty = 1.2f } },
    };

    [Theory]
    [MemberData(nameof(Unhonourable))]
    public async Task Settings_the_engine_cannot_honour_are_refused_as_the_chat_client_refuses_them(string key, object value, ChatOptions equivalent)
    {
        var settings = new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { [key] = value, ["max_tokens"] = 8 } };

        var refused = Assert.Throws<NotSupportedException>(() => BeaglePromptExecutionSettings.FromExecutionSettings(settings));
        var byClient = Assert.Throws<NotSupportedException>(() => ChatRequestMapper.ToTurns([new ChatMessage(ChatRole.User, "Tom")], equivalent));
        Assert.Equal(byClient.Message, refused.Message);
        Assert.Contains(key, refused.Message);

        // Through the Semantic Kernel service: refused before any request reaches the chat client.
        var recorder = new RecordingChatClient();
        var service = new BeagleChatCompletionService(recorder);
        await Assert.ThrowsAsync<NotSupportedException>(() => service.GetChatMessageContentsAsync(new ChatHistory("Tom"), settings));
        Assert.Null(recorder.Received);
    }

    [Fact]
    public void Settings_that_ask_for_what_the_engine_does_anyway_are_accepted()
    {
        var s = new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["response_format"] = "text", ["frequency_penalty"] = 0, ["presence_penalty"] = 0.0, ["tools"] = Array.Empty<object>() } };
        var o = BeaglePromptExecutionSettings.FromExecutionSettings(s).ToChatOptions();
        Assert.Equal(ChatResponseFormat.Text, o.ResponseFormat);
        Assert.False(o.AdditionalProperties?.ContainsKey("response_format") ?? false);
        var tools = new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["tools"] = new[] { new { type = "function" } } } };
        Assert.Throws<NotSupportedException>(() => BeaglePromptExecutionSettings.FromExecutionSettings(tools));
    }

    [Fact]
    public void Function_choice_behavior_is_refused()
    {
        var s = new PromptExecutionSettings { FunctionChoiceBehavior = FunctionChoiceBehavior.Auto() };
        Assert.Throws<NotSupportedException>(() => BeaglePromptExecutionSettings.FromExecutionSettings(s));
    }
}
