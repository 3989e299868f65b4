using Beagle.SemanticKernel;
using Beagle.Tests.Infrastructure;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Xunit;

namespace Beagle.Tests.SemanticKernel;

public sealed class RegistrationTests
{
    static BeagleModelOptions Missing => new() { TargetPath = "/nonexistent/model.bin", Device = "cpu" };

    [Fact]
    public async Task Services_resolve_without_loading_the_model()
    {
        var services = new ServiceCollection();
        services.AddBeagleChatClient(Missing);
        services.AddBeagleChatClient(Missing, serviceKey: "second");
        await using var sp = services.BuildServiceProvider();

        var client = sp.GetRequiredService<IChatClient>();
        var keyed = sp.GetRequiredKeyedService<IChatClient>("second");
        Assert.NotSame(client, keyed);
        Assert.Equal("model", client.GetService<ChatClientMetadata>()!.DefaultModelId);
        Assert.False(sp.GetRequiredService<BeagleEngineProvider>().IsCreated);
        Assert.False(sp.GetRequiredKeyedService<BeagleEngineProvider>("second").IsCreated);
        // The first request loads, and reports the missing file clearly.
        var e = await Assert.ThrowsAsync<FileNotFoundException>(() => client.GetResponseAsync("hello"));
        Assert.Contains("TargetPath", e.Message);
    }

    [Fact]
    public void Kernel_resolves_keyed_chat_completion_without_loading_the_model()
    {
        var kernel = Kernel.CreateBuilder().AddBeagleChatCompletion(Missing, "beagle").Build();
        var service = kernel.GetRequiredService<IChatCompletionService>("beagle");
        Assert.IsType<BeagleChatCompletionService>(service);
        Assert.Equal("model", service.Attributes[Microsoft.SemanticKernel.Services.AIServiceExtensions.ModelIdKey]);
        Assert.False(kernel.Services.GetRequiredKeyedService<BeagleEngineProvider>("beagle").IsCreated);
    }

    [Fact]
    public void Invalid_options_are_refused_at_registration_naming_the_setting()
    {
        var e = Assert.Throws<ArgumentException>(() => new ServiceCollection().AddBeagleChatClient(new BeagleModelOptions { TargetPath = "", QueueCapacity = 0 }));
        Assert.Contains("TargetPath", e.Message);
        Assert.Contains("QueueCapacity", e.Message);
        var t = Assert.Throws<ArgumentException>(() => new ServiceCollection().AddBeagleChatClient(new BeagleModelOptions { TargetPath = "x.bin", ChatTemplate = "jinja" }));
        Assert.Contains("ChatTemplate", t.Message);
    }

    [Fact]
    public async Task Kernel_prompts_run_non_streaming_and_streaming_with_statistics()
    {
        var options = StoriesChatFixture.Options();
        var kernel = Kernel.CreateBuilder().AddBeagleChatCompletion(options, "beagle").Build();
        var args = new KernelArguments(new BeaglePromptExecutionSettings { ServiceId = "beagle", MaxTokens = 24 }) { ["name"] = "Lily" };

        var result = await kernel.InvokePromptAsync("Once upon a time, {{$name}} went to the park", args);
        var text = result.GetValue<string>()!;
        Assert.False(string.IsNullOrWhiteSpace(text));
        var message = result.GetValue<ChatMessageContent>()!;
        Assert.True((double)message.Metadata![BeagleChatClient.TokensPerSecondKey]! > 0);
        Assert.Equal(24, ((UsageDetails)message.Metadata["Usage"]!).OutputTokenCount);

        var streamed = new System.Text.StringBuilder();
        StreamingChatMessageContent? last = null;
        await foreach (var c in kernel.InvokePromptStreamingAsync<StreamingChatMessageContent>("Once upon a time, {{$name}} went to the park", args))
        { streamed.Append(c.Content); last = c; }
        Assert.Equal(text, streamed.ToString());
        Assert.True(last!.Metadata!.ContainsKey(BeagleChatClient.AcceptanceLengthKey));
        await kernel.Services.GetRequiredKeyedService<BeagleEngineProvider>("beagle").DisposeAsync();
    }

    [Fact]
    public async Task A_kernel_with_only_the_chat_client_answers_prompts()
    {
        var kernel = Kernel.CreateBuilder().AddBeagleChatClient(StoriesChatFixture.Options()).Build();
        var result = await kernel.InvokePromptAsync("Tom had a ball",
            new KernelArguments(new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["max_tokens"] = 8 } }));
        Assert.False(string.IsNullOrWhiteSpace(result.ToString()));
        await kernel.Services.GetRequiredService<BeagleEngineProvider>().DisposeAsync();
    }
}
