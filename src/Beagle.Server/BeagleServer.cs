using System.Security.Cryptography;
using System.Text;
using Beagle.SemanticKernel;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Beagle.Server;

/// <summary>
/// <c>beagle serve</c>: an OpenAI-compatible HTTP server over one <see cref="Runtime.BeagleEngine"/>. The model is wired
/// exactly as a Generic Host application wires it (<c>AddBeagle</c>: validated options, the model loaded at start, the
/// "beagle" health check, the "Beagle" meter); this class adds Kestrel on loopback, the endpoints, the optional API key
/// and the Prometheus exporter.
/// </summary>
public static class BeagleServer
{
    /// <summary>Routes that answer without the API key: orchestrators probe them and they reveal nothing about requests.</summary>
    static readonly string[] OpenPaths = ["/health/live", "/health/ready"];

    /// <summary>The fixed routes and their method (for 405 answers).</summary>
    static readonly Dictionary<string, string> Routes = new(StringComparer.Ordinal)
    {
        ["/v1/chat/completions"] = "POST", ["/v1/completions"] = "POST", ["/v1/models"] = "GET",
        ["/health"] = "GET", ["/health/live"] = "GET", ["/health/ready"] = "GET", ["/metrics"] = "GET",
    };

    /// <summary>Builds (does not start) the server. Start it with RunAsync or StartAsync; <see cref="BaseAddress"/> then says where it listens.</summary>
    public static WebApplication Create(Action<BeagleModelOptions> configureModel, BeagleServerOptions server, Action<ILoggingBuilder>? logging = null)
    {
        ArgumentNullException.ThrowIfNull(configureModel);
        server = (server ?? throw new ArgumentNullException(nameof(server))).Clone().Validate();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory, Args = [] });
        builder.Logging.ClearProviders();
        if (logging is null) builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; }).SetMinimumLevel(LogLevel.Information)
            .AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        else logging(builder.Logging);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = server.MaxRequestBytes;
            k.Listen(server.Address, server.Port);
        });
        builder.Services.AddBeagle(configureModel);
        builder.Services.AddBeagleServer(server);
        var app = builder.Build();
        app.MapBeagleServer();
        return app;
    }

    /// <summary>Registers the server's services (the model itself comes from <c>AddBeagle</c>).</summary>
    public static IServiceCollection AddBeagleServer(this IServiceCollection services, BeagleServerOptions server)
    {
        services.AddSingleton(server.Clone().Validate());
        services.AddSingleton<OpenAiEndpoints>();
        services.AddSingleton<PrometheusExporter>();
        return services;
    }

    /// <summary>Maps the endpoints: /v1/chat/completions, /v1/completions, /v1/models, /health, /health/live, /health/ready, /metrics.</summary>
    public static WebApplication MapBeagleServer(this WebApplication app)
    {
        var options = app.Services.GetRequiredService<BeagleServerOptions>();
        // A request's prompts enter the engine's queue together: more of them than it holds could never all get a place.
        int queue = app.Services.GetRequiredService<BeagleEngineProvider>().Options.QueueCapacity;
        if (options.MaxPromptsPerRequest > queue)
            throw new ArgumentException($"invalid Beagle server options: {nameof(BeagleServerOptions.MaxPromptsPerRequest)} ({options.MaxPromptsPerRequest}) is above the model's " +
                $"{nameof(BeagleModelOptions.QueueCapacity)} ({queue}): all of a request's prompts wait in the engine's queue together; lower the one or raise the other");
        // Created now, not at the first scrape: a MeterListener only sees measurements made after it starts.
        app.Services.GetRequiredService<PrometheusExporter>();
        if (options.ApiKey is { } key) app.Use(RequireKey(Encoding.UTF8.GetBytes(key)));
        var api = app.Services.GetRequiredService<OpenAiEndpoints>();
        app.MapPost("/v1/chat/completions", api.Chat);
        app.MapPost("/v1/completions", api.Completions);
        app.MapGet("/v1/models", api.Models);
        app.MapGet("/v1/models/{id}", (HttpContext ctx, string id) => api.Model(ctx, id));
        app.MapGet("/health/live", (HttpContext ctx) => OpenAiEndpoints.WriteJson(ctx, 200, w => { w.WriteStartObject(); w.WriteString("status", "alive"); w.WriteEndObject(); }));
        app.MapGet("/health/ready", Ready);
        app.MapGet("/health", Ready);
        app.MapGet("/metrics", (HttpContext ctx, PrometheusExporter exporter) =>
            Results.Text(exporter.Scrape(), "text/plain; version=0.0.4; charset=utf-8"));
        // Anything else: 405 for a known path with another method, else 404, both in OpenAI's shape.
        app.MapFallback((HttpContext ctx) => OpenAiEndpoints.WriteError(ctx, Routes.TryGetValue(ctx.Request.Path.Value ?? "", out var method)
            ? new OpenAiError(405, $"method {ctx.Request.Method} is not allowed on {ctx.Request.Path}: use {method}", OpenAiError.InvalidRequest, null, "method_not_allowed")
            : new OpenAiError(404, $"no route {ctx.Request.Method} {ctx.Request.Path}: the server serves POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics",
                OpenAiError.NotFound, null, "unknown_route")));
        return app;
    }

    /// <summary>The address the started server listens on (with the real port when it was 0).</summary>
    public static Uri BaseAddress(this WebApplication app) =>
        new(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());

    /// <summary>
    /// Readiness: 200 when the model is loaded and the queue has room; 503 while loading, when loading failed, or when
    /// the queue is full (a load balancer should send the next request elsewhere). The body is the "beagle" health check.
    /// </summary>
    static async Task Ready(HttpContext ctx, HealthCheckService health)
    {
        var report = await health.CheckHealthAsync(r => r.Tags.Contains("beagle"), ctx.RequestAborted);
        var entry = report.Entries.Values.FirstOrDefault();
        await OpenAiEndpoints.WriteJson(ctx, report.Status == HealthStatus.Healthy ? 200 : 503, w =>
        {
            w.WriteStartObject();
            w.WriteString("status", report.Status == HealthStatus.Healthy ? "ready" : report.Status == HealthStatus.Degraded ? "not_ready" : "failed");
            w.WriteString("description", entry.Description);
            w.WriteStartObject("data");
            if (entry.Data is { } data)
                foreach (var (k, v) in data)
                    switch (v)
                    {
                        case int i: w.WriteNumber(k, i); break;
                        default: w.WriteString(k, v?.ToString()); break;
                    }
            w.WriteEndObject();
            w.WriteEndObject();
        });
    }

    static Func<HttpContext, RequestDelegate, Task> RequireKey(byte[] key) => (ctx, next) =>
    {
        if (OpenPaths.Contains(ctx.Request.Path.Value, StringComparer.Ordinal)) return next(ctx);
        var header = ctx.Request.Headers.Authorization.ToString();
        var given = header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? Encoding.UTF8.GetBytes(header[7..].Trim()) : [];
        // Fixed-time comparison: the time to refuse does not tell how much of a guessed key was right.
        if (given.Length == key.Length && CryptographicOperations.FixedTimeEquals(given, key)) return next(ctx);
        ctx.Response.Headers.WWWAuthenticate = "Bearer";
        ServerMetrics.Requests.Add(1, new("endpoint", ctx.Request.Path.Value), new("status", 401));
        return OpenAiEndpoints.WriteError(ctx, new OpenAiError(401,
            header.Length == 0 ? "missing API key: send 'Authorization: Bearer KEY' (the server was started with an API key)" : "incorrect API key provided",
            OpenAiError.Authentication, null, "invalid_api_key"));
    };
}
