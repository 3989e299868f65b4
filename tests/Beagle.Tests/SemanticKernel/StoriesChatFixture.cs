using Beagle.SemanticKernel;
using Beagle.Tests.Infrastructure;

using Xunit;

namespace Beagle.Tests.SemanticKernel;

/// <summary>One engine over stories260K shared by the tests of a class (the engine owns its own copy of the model).</summary>
public sealed class StoriesChatFixture : IAsyncLifetime
{
    public string ModelId { get; } = "stories260K-" + Guid.NewGuid().ToString("N")[..8];
    public BeagleEngineProvider Provider { get; private set; } = null!;
    public BeagleChatClient Client { get; private set; } = null!;

    public static BeagleModelOptions Options(string? modelId = null, int queueCapacity = 16) => new()
    {
        TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, Device = "cpu", Threads = 1,
        QueueCapacity = queueCapacity, ModelId = modelId,
    };

    public async Task InitializeAsync()
    {
        Provider = new BeagleEngineProvider(Options(ModelId));
        Client = new BeagleChatClient(Provider);
        await Provider.GetReadyEngineAsync();
    }

    public async Task DisposeAsync() => await Provider.DisposeAsync();
}
