using Beagle.SemanticKernel;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Beagle.Hosting;

/// <summary>Healthy when the model is loaded (with its queue depth), degraded while loading or when the queue is full, unhealthy when loading failed.</summary>
internal sealed class BeagleHealthCheck(BeagleEngineProvider provider) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var data = new Dictionary<string, object> { ["model"] = provider.ModelId };
        if (!provider.IsCreated) return Task.FromResult(HealthCheckResult.Degraded("the model is not loaded yet", data: data));
        var engine = provider.Engine;
        var ready = engine.Ready;
        if (ready.IsFaulted)
            return Task.FromResult(HealthCheckResult.Unhealthy($"the model failed to load: {ready.Exception!.InnerException!.Message}", ready.Exception.InnerException, data));
        if (!ready.IsCompleted) return Task.FromResult(HealthCheckResult.Degraded("the model is loading", data: data));
        int depth = engine.QueueDepth, waiting = engine.WaitingRequests;
        data["queue_depth"] = depth;
        data["queue_capacity"] = provider.Options.QueueCapacity;
        data["batch_size"] = engine.BatchSize;
        data["draft"] = engine.Draft?.Architecture ?? "none";
        // QueueDepth counts the running requests too (up to a batch); only those waiting can fill the queue.
        return Task.FromResult(waiting >= provider.Options.QueueCapacity
            ? HealthCheckResult.Degraded($"loaded; the request queue is full ({waiting} waiting, {depth - waiting} running)", data: data)
            : HealthCheckResult.Healthy($"loaded; {depth} request(s) queued or running", data));
    }
}
