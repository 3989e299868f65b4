using Beagle.SemanticKernel;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Logging;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>
/// Registrations in pairs (IServiceCollection and IKernelBuilder). Each registration owns one
/// <see cref="BeagleEngineProvider"/>: the model (and draft) load once, on the first request, and are disposed with
/// the container. Registering never touches the disk.
/// </summary>
public static class BeagleServiceCollectionExtensions
{
    /// <summary>Registers a (keyed, when <paramref name="serviceKey"/> is set) <see cref="IChatClient"/> over a Beagle engine.</summary>
    public static IServiceCollection AddBeagleChatClient(this IServiceCollection services, BeagleModelOptions options, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(options);
        var registered = options.Clone().Validate();   // shape only; files are checked when the model loads
        services.AddKeyedSingleton(serviceKey, (sp, _) => new BeagleEngineProvider(registered, sp.GetService<ILoggerFactory>()));
        services.AddKeyedSingleton<IChatClient>(serviceKey, (sp, key) =>
            new BeagleChatClient(sp.GetRequiredKeyedService<BeagleEngineProvider>(key), sp.GetService<ILogger<BeagleChatClient>>()));
        return services;
    }

    /// <summary>Registers the chat client and a (keyed) <see cref="IChatCompletionService"/> over it.</summary>
    public static IServiceCollection AddBeagleChatCompletion(this IServiceCollection services, BeagleModelOptions options, string? serviceId = null)
    {
        services.AddBeagleChatClient(options, serviceId);
        services.AddKeyedSingleton<IChatCompletionService>(serviceId, (sp, key) => new BeagleChatCompletionService(sp.GetRequiredKeyedService<IChatClient>(key)));
        return services;
    }

    /// <summary>Adds Beagle chat completion to a kernel (keyed by <paramref name="serviceId"/>).</summary>
    public static IKernelBuilder AddBeagleChatCompletion(this IKernelBuilder builder, BeagleModelOptions options, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddBeagleChatCompletion(options, serviceId);
        return builder;
    }

    /// <summary>Adds the Beagle chat client alone to a kernel (SK reaches it through its IChatClient support).</summary>
    public static IKernelBuilder AddBeagleChatClient(this IKernelBuilder builder, BeagleModelOptions options, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddBeagleChatClient(options, serviceId);
        return builder;
    }
}
