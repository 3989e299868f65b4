using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json;
using Beagle.Runtime;
using Beagle.SemanticKernel;
using Beagle.Server;
using Beagle.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Xunit;

namespace Beagle.Tests.Server;

/// <summary>
/// A real server (Kestrel on 127.0.0.1, port 0) over stories260K with its bundled Beagle draft, and, independently, an
/// in-process chat client over its own engine with the same settings: the reference a server answer must equal.
/// </summary>
public class ServerFixture : IAsyncLifetime
{
    public string ModelId { get; } = "stories-" + Guid.NewGuid().ToString("N")[..8];
    public WebApplication App { get; private set; } = null!;
    public Uri BaseAddress { get; private set; } = null!;
    /// <summary>The OpenAI base address clients are given (…/v1).</summary>
    public Uri V1 => new(BaseAddress, "v1");
    public HttpClient Http { get; private set; } = null!;
    /// <summary>The server's own engine provider.</summary>
    public BeagleEngineProvider Provider { get; private set; } = null!;
    public BeagleEngineProvider ReferenceProvider { get; private set; } = null!;
    /// <summary>The in-process face over an engine of its own.</summary>
    public BeagleChatClient InProcess { get; private set; } = null!;

    protected virtual int QueueCapacity => 16;
    /// <summary>Serve the bundled stories5M (12 layers: long enough generations for disconnect tests) instead of stories260K.</summary>
    protected virtual bool Stories5M => false;
    protected virtual BeagleServerOptions Server => new() { Port = 0 };

    public static string Draft => DefaultModels.BundledDraft(DefaultModels.Stories260K)
        ?? throw new InvalidOperationException("the bundled stories260K Beagle draft is missing next to the test assembly");

    public void Configure(BeagleModelOptions o)
    {
        o.TargetPath = Stories5M ? DefaultModels.Stories5M : TestAssets.ModelPath;
        o.TokenizerPath = Stories5M ? null : TestAssets.TokenizerPath;
        o.DraftPath = Stories5M ? null : Draft;   // stories5M: its bundled draft (UseBundledDraft)
        o.Device = "cpu";
        o.Threads = 1;
        o.QueueCapacity = QueueCapacity;
        o.ModelId = ModelId;
        o.DefaultMaxTokens = 32;
    }

    public async Task InitializeAsync()
    {
        App = BeagleServer.Create(Configure, Server, logging: _ => { });
        await App.StartAsync();
        BaseAddress = App.BaseAddress();
        Provider = App.Services.GetRequiredService<BeagleEngineProvider>();
        await Provider.GetReadyEngineAsync();
        Http = new HttpClient { BaseAddress = BaseAddress };
        var reference = new BeagleModelOptions();
        Configure(reference);
        // Its own id: the queue-depth gauge is per model id, and this engine's depth must not mask the server's.
        reference.ModelId = ModelId + "-in-process";
        ReferenceProvider = new BeagleEngineProvider(reference);
        InProcess = new BeagleChatClient(ReferenceProvider);
        await ReferenceProvider.GetReadyEngineAsync();
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
        await ReferenceProvider.DisposeAsync();
    }

    /// <summary>POSTs raw text (not necessarily JSON) and returns the status and the parsed body.</summary>
    public async Task<(int Status, JsonElement Body)> Post(string path, string body, string? apiKey = null)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json") };
        if (apiKey is not null) request.Headers.Authorization = new("Bearer", apiKey);
        using var response = await Http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        return ((int)response.StatusCode, text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone());
    }

    public Task<(int Status, JsonElement Body)> Post(string path, object body, string? apiKey = null) => Post(path, JsonSerializer.Serialize(body), apiKey);

    /// <summary>The sum of a metric's samples for this fixture's model in the server's /metrics (0 when absent).</summary>
    public async Task<double> Metric(string name, string? extraLabel = null)
    {
        var text = await Http.GetStringAsync("metrics");
        double sum = 0;
        foreach (var line in text.Split('\n'))
            if (line.StartsWith(name + "{", StringComparison.Ordinal) && line.Contains($"beagle_model=\"{ModelId}\"", StringComparison.Ordinal)
                && (extraLabel is null || line.Contains(extraLabel, StringComparison.Ordinal)))
                sum += double.Parse(line[(line.LastIndexOf(' ') + 1)..], CultureInfo.InvariantCulture);
        return sum;
    }

    /// <summary>Waits (bounded) until the engine's queue depth, as /metrics reports it, is <paramref name="depth"/>.</summary>
    public async Task<double> WaitForQueueDepth(double depth, TimeSpan? timeout = null) =>
        await WaitForMetric("beagle_engine_queue_depth", d => d == depth, timeout);

    /// <summary>
    /// Waits (bounded) until <paramref name="name"/> satisfies <paramref name="done"/>, and returns its last value: the
    /// server records some measurements just after the response ends (a cancelled stream's counter, for one), so a
    /// client that reads them at once can be a few milliseconds early.
    /// </summary>
    public async Task<double> WaitForMetric(string name, Func<double, bool> done, TimeSpan? timeout = null)
    {
        var until = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(20));
        double d;
        while (!done(d = await Metric(name)) && DateTime.UtcNow < until) await Task.Delay(20);
        return d;
    }
}
