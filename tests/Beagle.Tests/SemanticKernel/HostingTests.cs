using Beagle.SemanticKernel;
using Beagle.Tests.Infrastructure;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Microsoft.SemanticKernel.ChatCompletion;
using Xunit;

namespace Beagle.Tests.SemanticKernel;

public sealed class HostingTests
{
    static IHost Build(Dictionary<string, string?> settings)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Configuration.AddInMemoryCollection(settings);
        builder.Services.AddBeagle(builder.Configuration.GetSection("Beagle"));
        return builder.Build();
    }

    static Dictionary<string, string?> Good => new()
    {
        ["Beagle:TargetPath"] = TestAssets.ModelPath, ["Beagle:TokenizerPath"] = TestAssets.TokenizerPath,
        ["Beagle:Device"] = "cpu", ["Beagle:Threads"] = "1", ["Beagle:DefaultMaxTokens"] = "16",
    };

    [Fact]
    public async Task Host_starts_loads_the_model_serves_and_stops()
    {
        using var host = Build(Good);
        await host.StartAsync();
        var provider = host.Services.GetRequiredService<BeagleEngineProvider>();
        Assert.True(provider.Engine.Ready.IsCompletedSuccessfully);   // loaded during start

        var health = await host.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync();
        Assert.Equal(HealthStatus.Healthy, health.Status);
        Assert.Equal(0, health.Entries["beagle"].Data["queue_depth"]);

        var response = await host.Services.GetRequiredService<IChatClient>().GetResponseAsync("Once upon a time");
        Assert.Equal(16, response.Usage!.OutputTokenCount);   // DefaultMaxTokens from configuration
        Assert.IsType<BeagleChatCompletionService>(host.Services.GetRequiredService<IChatCompletionService>());
        await host.StopAsync();
    }

    [Theory]
    [InlineData("Beagle:TargetPath", "", "Beagle:TargetPath is required")]
    [InlineData("Beagle:TargetPath", "/nonexistent/stories.bin", "Beagle:TargetPath: no file or folder")]
    [InlineData("Beagle:QueueCapacity", "0", "Beagle:QueueCapacity must be >= 1")]
    [InlineData("Beagle:MaxBatchSize", "0", "Beagle:MaxBatchSize must be >= 1")]
    [InlineData("Beagle:Device", "tpu", "Beagle:Device must be auto, cpu or cuda")]
    [InlineData("Beagle:ChatTemplate", "jinja", "Beagle:ChatTemplate: unknown template")]
    [InlineData("Beagle:StreamIdleTimeout", "00:00:00", "Beagle:StreamIdleTimeout must be positive")]
    public async Task Bad_configuration_fails_at_start_naming_the_setting(string key, string value, string expected)
    {
        var settings = Good;
        settings[key] = value;
        using var host = Build(settings);
        var e = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public async Task A_model_that_fails_to_load_is_reported_unhealthy()
    {
        using var temp = TestAssets.TempDir();
        File.WriteAllBytes(temp.File("broken.bin"), [1, 2, 3]);
        var settings = Good;
        settings["Beagle:TargetPath"] = temp.File("broken.bin");
        using var host = Build(settings);
        await host.StartAsync();
        var health = await host.Services.GetRequiredService<HealthCheckService>().CheckHealthAsync();
        Assert.Equal(HealthStatus.Unhealthy, health.Status);
        Assert.Contains("failed to load", health.Entries["beagle"].Description);
        await host.StopAsync();
    }
}
