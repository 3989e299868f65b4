using Beagle.Decoding;
using Beagle.SemanticKernel;
using Beagle.Tests.Infrastructure;
using Microsoft.Extensions.AI;
using Xunit;

namespace Beagle.Tests.SemanticKernel;

/// <summary>The chat face's default registration: the bundled stories5M with its bundled Beagle draft, speculatively.</summary>
public sealed class DefaultModelChatTests
{
    [Fact]
    public async Task Default_options_serve_stories5M_speculatively_with_its_bundled_draft_and_plain_greedy_output()
    {
        var options = new BeagleModelOptions { Device = "cpu", Threads = 1 };
        Assert.Equal("stories5M", options.TargetPath);
        await using var provider = new BeagleEngineProvider(options);
        var client = new BeagleChatClient(provider);
        var response = await client.GetResponseAsync([new ChatMessage(ChatRole.User, "Once upon a time")], new ChatOptions { MaxOutputTokens = 48, Temperature = 0 });

        var engine = await provider.GetReadyEngineAsync();
        Assert.Equal("beagle", engine.Draft?.Architecture);
        // What ran: the trained draft was accepted (several tokens per target forward), not plain decoding.
        Assert.True((double)response.AdditionalProperties![BeagleChatClient.AcceptanceLengthKey]! > 2.0,
            $"acceptance length {response.AdditionalProperties[BeagleChatClient.AcceptanceLengthKey]}");
        var reference = new Generator(TestAssets.Stories5M, TestAssets.StoriesTokenizer).Complete("Once upon a time", new GenerationOptions { MaxNewTokens = 48 });
        Assert.Equal(reference.Text, response.Text);
    }

    [Fact]
    public void UseBundledDraft_false_or_a_path_target_means_no_implicit_draft()
    {
        Assert.Empty(new BeagleModelOptions { UseBundledDraft = false }.Problems(checkFiles: true));
        Assert.Contains(new BeagleModelOptions { TargetPath = "no-such-model.bin" }.Problems(checkFiles: true), p => p.Contains("no file or folder"));
    }

    [Theory]
    [InlineData("draft-lm")]
    [InlineData("ngram")]
    public async Task A_training_free_draft_serves_the_same_greedy_output(string kind)
    {
        var options = new BeagleModelOptions
        {
            TargetPath = TestAssets.ModelPath, Device = "cpu", Threads = 1,
            DraftModel = kind == "draft-lm" ? TestAssets.ModelPath : null, NGram = kind == "ngram",
        };
        Assert.Empty(options.Problems(checkFiles: true));
        await using var provider = new BeagleEngineProvider(options);
        var client = new BeagleChatClient(provider);
        var response = await client.GetResponseAsync([new ChatMessage(ChatRole.User, "Once upon a time")], new ChatOptions { MaxOutputTokens = 48, Temperature = 0 });
        var engine = await provider.GetReadyEngineAsync();
        Assert.Equal(kind, engine.Draft?.Architecture);   // not the bundled trained draft
        var reference = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer).Complete("Once upon a time", new GenerationOptions { MaxNewTokens = 48 });
        Assert.Equal(reference.Text, response.Text);
    }

    [Fact]
    public void Two_drafts_at_once_or_a_missing_draft_model_are_problems_named_by_setting()
    {
        Assert.Contains(new BeagleModelOptions { DraftModel = "stories260K", NGram = true }.Problems(checkFiles: false), p => p.Contains("DraftModel and NGram"));
        Assert.Contains(new BeagleModelOptions { DraftPath = "x", NGram = true }.Problems(checkFiles: false), p => p.Contains("DraftPath and NGram"));
        Assert.Contains(new BeagleModelOptions { DraftModel = "no-such.bin" }.Problems(checkFiles: true), p => p.Contains("DraftModel: no llama2.c file"));
        Assert.Empty(new BeagleModelOptions { DraftModel = "no-such.bin" }.Problems(checkFiles: false));
    }
}
