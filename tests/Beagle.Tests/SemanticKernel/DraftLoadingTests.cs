using Beagle.Checkpoints;
using Beagle.Drafting;
using Beagle.SemanticKernel;
using Beagle.Tests.Infrastructure;
using Microsoft.Extensions.AI;
using Xunit;

namespace Beagle.Tests.SemanticKernel;

/// <summary>
/// The provider loads through the core: TargetLoader (llama2.c files and Hugging Face folders) and DraftCheckpoint.
/// Drafts have random weights (until trained drafts are committed under models/stories260K/beagle): greedy speculative
/// decoding must still give exactly the plain greedy text.
/// </summary>
public sealed class DraftLoadingTests
{
    static List<ChatMessage> Story() => [new(ChatRole.User, "Once upon a time, there was a little cat")];

    static string RandomDraft(TempDir dir, string arch = DraftConfig.Beagle)
    {
        var path = dir.File("draft-" + arch);
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(TestAssets.Stories.Config, arch), TestAssets.Stories);
        DraftCheckpoint.Save(draft, path);
        return path;
    }

    static ChatOptions Options(bool? speculative = null) => new()
    {
        MaxOutputTokens = 40,
        AdditionalProperties = speculative is { } s ? new() { ["speculative"] = s } : null,
    };

    [Theory]
    [InlineData(DraftConfig.Beagle)]
    [InlineData(DraftConfig.Eagle2)]
    public async Task With_a_draft_requests_are_speculative_by_default_lossless_and_can_opt_out(string arch)
    {
        using var dir = TestAssets.TempDir();
        var options = StoriesChatFixture.Options();
        options.DraftPath = RandomDraft(dir, arch);
        await using var provider = new BeagleEngineProvider(options);
        var client = new BeagleChatClient(provider);

        var spec = await client.GetResponseAsync(Story(), Options());
        var plain = await client.GetResponseAsync(Story(), Options(speculative: false));
        var explicitSpec = await client.GetResponseAsync(Story(), Options(speculative: true));

        Assert.Equal(arch, provider.Engine.Draft!.Architecture);
        Assert.Equal(true, spec.AdditionalProperties![BeagleChatClient.SpeculativeKey]);
        Assert.Equal(false, plain.AdditionalProperties![BeagleChatClient.SpeculativeKey]);
        Assert.Equal(plain.Text, spec.Text);
        Assert.Equal(plain.Text, explicitSpec.Text);
        Assert.Equal(1.0, (double)plain.AdditionalProperties![BeagleChatClient.AcceptanceLengthKey]!, 3);
        Assert.True((double)spec.AdditionalProperties![BeagleChatClient.AcceptanceLengthKey]! >= 1.0);
    }

    [Fact]
    public async Task A_Hugging_Face_folder_serves_the_same_text_as_the_llama2c_file_and_takes_the_same_draft()
    {
        using var dir = TestAssets.TempDir();
        using (var w = Llama2cCheckpoint.Load(TestAssets.ModelPath)) HuggingFaceExport.Write(w, dir.File("hf"));
        var draft = RandomDraft(dir);

        await using var fromFile = new BeagleEngineProvider(StoriesChatFixture.Options());
        var hfOptions = StoriesChatFixture.Options();
        hfOptions.TargetPath = dir.File("hf");
        hfOptions.TokenizerPath = TestAssets.TokenizerPath;
        hfOptions.DraftPath = draft;   // the fingerprint (embedding hash) is the same: the weights are the same
        await using var fromFolder = new BeagleEngineProvider(hfOptions);

        var a = await new BeagleChatClient(fromFile).GetResponseAsync(Story(), Options());
        var b = await new BeagleChatClient(fromFolder).GetResponseAsync(Story(), Options());
        Assert.Equal(a.Text, b.Text);
        Assert.Equal(true, b.AdditionalProperties![BeagleChatClient.SpeculativeKey]);
    }

    [Fact]
    public async Task A_draft_for_another_target_is_refused_naming_DraftPath()
    {
        using var dir = TestAssets.TempDir();
        var other = File.ReadAllBytes(TestAssets.ModelPath);
        BitConverter.GetBytes(BitConverter.ToSingle(other, 28) + 0.5f).CopyTo(other, 28);
        File.WriteAllBytes(dir.File("other.bin"), other);
        using (var w = Llama2cCheckpoint.Load(dir.File("other.bin")))
        using (var model = new Beagle.Models.LlamaModel(w))
        using (var d = DraftCheckpoint.Create(DraftConfig.ForTarget(model.Config), model))
            DraftCheckpoint.Save(d, dir.File("draft"));
        var options = StoriesChatFixture.Options();
        options.DraftPath = dir.File("draft");
        await using var provider = new BeagleEngineProvider(options);

        var e = await Assert.ThrowsAsync<InvalidDataException>(() => provider.GetReadyEngineAsync());
        Assert.Contains("DraftPath", e.Message);
        Assert.Contains("was trained for", e.Message);
    }
}
