using Beagle.SemanticKernel;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Beagle.Hosting;

/// <summary>
/// Loads the model once, at host start, and waits for it. A model that fails to load does not stop the host: the
/// failure is logged and reported by the health check (configuration errors do stop it, through ValidateOnStart).
/// </summary>
internal sealed class BeagleEngineLoader(BeagleEngineProvider provider, ILogger<BeagleEngineLoader> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        try { await provider.GetReadyEngineAsync(cancellationToken).ConfigureAwait(false); }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested) { throw; }
        catch (Exception e) { logger.LogError(e, "Beagle model {ModelId} failed to load; the health check reports it", provider.ModelId); }
    }

    /// <summary>The provider (a container singleton) disposes the engine when the host's container is disposed.</summary>
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
