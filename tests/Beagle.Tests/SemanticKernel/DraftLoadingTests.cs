using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Runtime;
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
        Assert.True((int)spec.AdditionalProperties[BeagleChatClient.DraftRoundsKey]! > 0);   // from the engine's statistics
        Assert.Equal(true, explicitSpec.AdditionalProperties![BeagleChatClient.SpeculativeKey]);
        Assert.Equal(false, plain.AdditionalProperties![BeagleChatClient.SpeculativeKey]);
        Assert.Equal(0, plain.AdditionalProperties[BeagleChatClient.DraftRoundsKey]);
        Assert.Equal(0L, plain.AdditionalProperties[BeagleChatClient.AcceptedDraftTokensKey]);
        Assert.Equal(plain.Text, spec.Text);
        Assert.Equal(plain.Text, explicitSpec.Text);
        Assert.Equal(1.0, (double)plain.AdditionalProperties![BeagleChatClient.AcceptanceLengthKey]!, 3);
        Assert.True((double)spec.AdditionalProperties![BeagleChatClient.AcceptanceLengthKey]! >= 1.0);
    }

    /// <summary>A chat client over an engine serving stories260K with the given draft (default: its trained Beagle draft).</summary>
    static async Task<(BeagleEngine Engine, BeagleChatClient Client)> EngineWith(Func<Beagle.Models.LlamaModel, IDraftModel>? draft = null)
    {
        var engine = new BeagleEngine(() =>
        {
            Beagle.Models.LlamaModel model;
            using (var weights = Llama2cCheckpoint.Load(TestAssets.ModelPath)) model = new Beagle.Models.LlamaModel(weights);
            return new EngineModels(model, Beagle.Tokenization.Llama2cTokenizer.Load(TestAssets.TokenizerPath, 512),
                draft?.Invoke(model) ?? DraftCheckpoint.Load(DefaultModels.BundledDraft("stories260K", "beagle")!, model));
        }, new EngineOptions { Threads = 1 });
        await engine.Ready;
        return (engine, new BeagleChatClient(engine, "stories260K"));
    }

    [Fact]
    public async Task The_speculative_flag_says_what_ran_with_the_trained_draft_accepted_tokens_counted()
    {
        var (engine, client) = await EngineWith();
        await using var _ = engine;
        var r = await client.GetResponseAsync(Story(), Options(speculative: true));
        Assert.Equal(true, r.AdditionalProperties![BeagleChatClient.SpeculativeKey]);
        Assert.True((int)r.AdditionalProperties[BeagleChatClient.DraftRoundsKey]! > 0);
        Assert.True((long)r.AdditionalProperties[BeagleChatClient.AcceptedDraftTokensKey]! > 0);
        Assert.True((double)r.AdditionalProperties[BeagleChatClient.AcceptanceLengthKey]! > 1.5, "the trained draft is accepted well above one token a round");
    }

    [Fact]
    public async Task A_request_that_asks_for_speculation_but_is_decoded_plainly_says_speculative_false()
    {
        var (engine, client) = await EngineWith();
        await using var _ = engine;
        var sk = new BeagleChatCompletionService(client);

        // Calibration found that drafting does not pay here: a request that leaves the budget to the default decodes plainly.
        await engine.RunAsync((g, _) => { g.Use(new CalibratedBudget(4, 3, 1, UsePlain: true, 0.9, 1, "", "", DateTime.UtcNow)); return 0; });
        var calibrated = await client.GetResponseAsync(Story(), Options(speculative: true));
        Assert.Equal(false, calibrated.AdditionalProperties![BeagleChatClient.SpeculativeKey]);
        Assert.Equal(0, calibrated.AdditionalProperties[BeagleChatClient.DraftRoundsKey]);
        Assert.Equal(1.0, (double)calibrated.AdditionalProperties[BeagleChatClient.AcceptanceLengthKey]!, 3);
        var history = new Microsoft.SemanticKernel.ChatCompletion.ChatHistory();
        history.AddUserMessage("Once upon a time, there was a little cat");
        var message = Assert.Single(await sk.GetChatMessageContentsAsync(history, new BeaglePromptExecutionSettings { MaxTokens = 40, Speculative = true }));
        Assert.Equal(false, message.Metadata![BeagleChatClient.SpeculativeKey]);   // Semantic Kernel's metadata too

        // An explicit budget whose confidence floor no draft node clears (this random draft is never 99 % sure of a token):
        // every round is a plain step inside the speculative strategy.
        var (randomEngine, randomClient) = await EngineWith(_ => MarkovDraft.Random(512, 7));
        await using var __ = randomEngine;
        var floored = new ChatOptions
        {
            MaxOutputTokens = 40,
            AdditionalProperties = new() { ["speculative"] = true, ["tree_tokens"] = 11, ["tree_depth"] = 10, ["tree_topk"] = 1, ["tree_min_prob"] = 0.99 },
        };
        var r = await randomClient.GetResponseAsync(Story(), floored);
        Assert.Equal(false, r.AdditionalProperties![BeagleChatClient.SpeculativeKey]);
        Assert.Equal(0, r.AdditionalProperties[BeagleChatClient.DraftRoundsKey]);
        Assert.Equal(calibrated.Text, r.Text);   // and the text is plain greedy's either way
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
