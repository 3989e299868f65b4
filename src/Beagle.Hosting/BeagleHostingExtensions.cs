using Beagle.Hosting;
using Beagle.Hosting.Training;
using Beagle.SemanticKernel;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Microsoft.SemanticKernel.ChatCompletion;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>
/// Generic Host integration: options bound and validated at start (a bad setting stops the host with a message naming
/// it), the model loaded once at start by a hosted service, a health check ("beagle"), and the chat client and the
/// Semantic Kernel service registered for injection. Metrics go to the "Beagle" meter (<see cref="BeagleMetrics"/>).
/// </summary>
public static class BeagleHostingExtensions
{
    /// <summary>Binds <see cref="BeagleModelOptions"/> from <paramref name="section"/> (e.g. configuration.GetSection("Beagle")).</summary>
    public static IServiceCollection AddBeagle(this IServiceCollection services, IConfiguration section)
    {
        ArgumentNullException.ThrowIfNull(section);
        var prefix = section is IConfigurationSection s && s.Path.Length > 0 ? s.Path + ":" : "";
        services.AddOptions<BeagleModelOptions>().Bind(section);
        return services.AddBeagleCore(prefix);
    }

    /// <summary>Configures <see cref="BeagleModelOptions"/> in code.</summary>
    public static IServiceCollection AddBeagle(this IServiceCollection services, Action<BeagleModelOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<BeagleModelOptions>().Configure(configure);
        return services.AddBeagleCore($"{nameof(BeagleModelOptions)}.");
    }

    static IServiceCollection AddBeagleCore(this IServiceCollection services, string prefix)
    {
        services.AddOptions<BeagleModelOptions>().ValidateOnStart();
        services.AddSingleton<IValidateOptions<BeagleModelOptions>>(new BeagleModelOptionsValidator(prefix));
        services.AddSingleton(sp => new BeagleEngineProvider(sp.GetRequiredService<IOptions<BeagleModelOptions>>().Value, sp.GetService<ILoggerFactory>()));
        services.AddSingleton<IChatClient>(sp => new BeagleChatClient(sp.GetRequiredService<BeagleEngineProvider>(), sp.GetService<ILogger<BeagleChatClient>>()));
        services.AddSingleton<IChatCompletionService>(sp => new BeagleChatCompletionService(sp.GetRequiredService<IChatClient>()));
        services.AddHostedService<BeagleEngineLoader>();
        services.AddHealthChecks().AddCheck<BeagleHealthCheck>("beagle", tags: ["beagle", "model"]);
        return services;
    }
    /// <summary>
    /// Adds the background draft-training service and <see cref="IDraftTrainingQueue"/>, configured from
    /// <paramref name="section"/> (e.g. configuration.GetSection("Beagle:Training")). Jobs run one at a time; unfinished
    /// jobs in the folder's jobs.json resume at start; host shutdown checkpoints the running one.
    /// </summary>
    public static IServiceCollection AddBeagleDraftTraining(this IServiceCollection services, IConfiguration section)
    {
        ArgumentNullException.ThrowIfNull(section);
        var prefix = section is IConfigurationSection s && s.Path.Length > 0 ? s.Path + ":" : "";
        services.AddOptions<DraftTrainingQueueOptions>().Bind(section);
        return services.AddBeagleDraftTrainingCore(prefix);
    }

    /// <summary>Adds the background draft-training service, configured in code (see the other overload).</summary>
    public static IServiceCollection AddBeagleDraftTraining(this IServiceCollection services, Action<DraftTrainingQueueOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<DraftTrainingQueueOptions>().Configure(configure);
        return services.AddBeagleDraftTrainingCore($"{nameof(DraftTrainingQueueOptions)}.");
    }

    static IServiceCollection AddBeagleDraftTrainingCore(this IServiceCollection services, string prefix)
    {
        services.AddOptions<DraftTrainingQueueOptions>().ValidateOnStart();
        services.AddSingleton<IValidateOptions<DraftTrainingQueueOptions>>(new DraftTrainingQueueOptionsValidator(prefix));
        services.AddSingleton<DraftTrainingService>();
        services.AddSingleton<IDraftTrainingQueue>(sp => sp.GetRequiredService<DraftTrainingService>());
        services.AddHostedService(sp => sp.GetRequiredService<DraftTrainingService>());
        return services;
    }
}
