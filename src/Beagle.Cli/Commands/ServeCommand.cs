using System.ComponentModel;
using Beagle.Runtime;
using Beagle.SemanticKernel;
using Beagle.Server;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

/// <summary>Model and server options of <c>beagle serve</c> (and of the server <c>beagle load-test</c> starts).</summary>
public class ServeSettings : ModelSettings
{
    [CommandOption("--draft <DIR>")]
    [Description("Draft checkpoint folder (draft.json + draft.safetensors) trained for the target. Default with a known model: its bundled Beagle draft.")]
    public string? Draft { get; init; }

    [CommandOption("--no-draft")]
    [Description("Decode plainly, without a draft.")]
    public bool NoDraft { get; init; }

    [CommandOption("--calibrate")]
    [Description("Measure the best draft-tree budget for this machine at load (a few seconds, cached), and decode plainly where drafting does not pay. Default: the built-in budget.")]
    public bool Calibrate { get; init; }

    [CommandOption("--host <ADDRESS>")]
    [Description("Address to listen on (default 127.0.0.1: loopback only). 0.0.0.0 exposes the server to the network: set --api-key then.")]
    public string Host { get; init; } = "127.0.0.1";

    [CommandOption("--port <PORT>")]
    [Description("TCP port (default 8080; 0 = any free port, printed at start).")]
    public int Port { get; init; } = 8080;

    [CommandOption("--api-key <KEY>")]
    [Description("Require 'Authorization: Bearer KEY' on every request but the health probes (401 otherwise). Default: $BEAGLE_API_KEY, else none.")]
    public string? ApiKey { get; init; }

    [CommandOption("--model-id <ID>")]
    [Description("The model name clients send and responses report. Default: the target's file or folder name (e.g. stories5M).")]
    public string? ModelId { get; init; }

    [CommandOption("--chat-template <NAME>")]
    [Description("plain, llama2, llama3, chatml or mistral. Default: detected from the model (plain for llama2.c story models).")]
    public string? ChatTemplate { get; init; }

    [CommandOption("--max-batch <N>")]
    [Description("Requests decoded at once, over all workers; each worker verifies its share in one forward per round (default 8; 1 = one at a time). Each gets exactly the output it would get alone.")]
    public int MaxBatch { get; init; } = 8;

    [CommandOption("--workers <N>")]
    [Description("Decoding threads, each running its own batch; a request joins the least loaded (default 1). With a small model on a CPU, one per core serves concurrent requests fastest. At most --max-batch.")]
    public int Workers { get; init; } = 1;

    [CommandOption("--queue-capacity <N>")]
    [Description("Requests that may wait for a place in the batch (default 64); more get 429 at once.")]
    public int QueueCapacity { get; init; } = 64;

    [CommandOption("--default-max-tokens <N>")]
    [Description("max_tokens of a request that sets none (default 256).")]
    public int DefaultMaxTokens { get; init; } = 256;

    [CommandOption("--max-tokens-limit <N>")]
    [Description("Largest max_tokens a request may ask for (default 2048); more gets 400.")]
    public int MaxTokensLimit { get; init; } = 2048;

    [CommandOption("--max-prompts <N>")]
    [Description("Most prompts one /v1/completions request may carry (default 16, or --queue-capacity if that is smaller; at most --queue-capacity: a request's prompts wait in the queue together); more gets 400.")]
    public int? MaxPrompts { get; init; }

    /// <summary>The prompts a request may carry: as given, else 16 within the queue.</summary>
    internal int EffectiveMaxPrompts => MaxPrompts ?? Math.Min(16, QueueCapacity);

    [CommandOption("--max-request-bytes <N>")]
    [Description("Largest request body in bytes (default 1048576); larger gets 413.")]
    public long MaxRequestBytes { get; init; } = 1 << 20;

    public override Spectre.Console.ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        if (Draft is not null && !Directory.Exists(Draft)) return Spectre.Console.ValidationResult.Error($"--draft: no folder at '{Draft}'");
        if (Draft is not null && NoDraft) return Spectre.Console.ValidationResult.Error("--draft and --no-draft exclude each other");
        var problems = ServerOptions().Problems();
        if (problems.Count > 0) return Spectre.Console.ValidationResult.Error(string.Join("; ", problems));
        if (QueueCapacity < 1) return Spectre.Console.ValidationResult.Error("--queue-capacity must be >= 1");
        if (MaxPrompts is { } mp && mp > QueueCapacity) return Spectre.Console.ValidationResult.Error($"--max-prompts ({MaxPrompts}) must not exceed --queue-capacity ({QueueCapacity}): all of a request's prompts wait in the queue together");
        if (MaxBatch < 1) return Spectre.Console.ValidationResult.Error("--max-batch must be >= 1 (1 = one request at a time)");
        if (Workers < 1 || Workers > MaxBatch) return Spectre.Console.ValidationResult.Error($"--workers must be between 1 and --max-batch ({MaxBatch})");
        if (DefaultMaxTokens < 1) return Spectre.Console.ValidationResult.Error("--default-max-tokens must be >= 1");
        return Spectre.Console.ValidationResult.Success();
    }

    internal BeagleServerOptions ServerOptions() => new()
    {
        Host = Host, Port = Port, ApiKey = ApiKey ?? NullIfEmpty(Environment.GetEnvironmentVariable("BEAGLE_API_KEY")),
        MaxTokensLimit = MaxTokensLimit, MaxRequestBytes = MaxRequestBytes, MaxPromptsPerRequest = EffectiveMaxPrompts,
    };

    static string? NullIfEmpty(string? s) => string.IsNullOrEmpty(s) ? null : s;

    /// <summary>
    /// The model registration: the same <see cref="BeagleModelOptions"/> a Generic Host application binds. The one place
    /// the server's loading is configured (a known name resolves to its files and bundled draft inside the provider).
    /// </summary>
    internal void ConfigureModel(BeagleModelOptions o)
    {
        o.TargetPath = Target ?? DefaultModels.Default;
        o.TokenizerPath = Tokenizer;
        o.DraftPath = NoDraft ? null : Draft;
        o.UseBundledDraft = !NoDraft;
        o.Device = Device;
        o.Threads = Threads;
        o.CalibrateTreeBudget = Calibrate;
        o.QueueCapacity = QueueCapacity;
        o.MaxBatchSize = MaxBatch;
        o.Workers = Workers;
        o.DefaultMaxTokens = DefaultMaxTokens;
        o.ModelId = ModelId;
        o.ChatTemplate = ChatTemplate;
    }
}

/// <summary>
/// <c>beagle serve</c>: runs the OpenAI-compatible server until Ctrl+C. The model loads before the first line saying
/// where the server listens, so a model that cannot load stops the command with its error (exit 1 or 3).
/// </summary>
public sealed class ServeCommand : AsyncCommand<ServeSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, ServeSettings s, CancellationToken cancellationToken)
    {
        await using var app = BeagleServer.Create(s.ConfigureModel, s.ServerOptions());
        var engine = await ServerStart.StartAsync(app, cancellationToken);
        var server = app.Services.GetRequiredService<BeagleServerOptions>();
        CliConsole.Status($"serving {engine.ModelId} ({engine.Draft}) at {app.BaseAddress()} — POST /v1/chat/completions, POST /v1/completions, GET /v1/models, /health, /metrics" +
            (server.ApiKey is null ? "; no API key" : "; API key required") + ". Ctrl+C stops.");
        try { await app.WaitForShutdownAsync(cancellationToken); }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested) { }
        await app.StopAsync(CancellationToken.None);
        return ExitCodes.Ok;
    }
}

/// <summary>Starts a built server and waits for its model; a model that fails to load stops it and throws the loading error.</summary>
internal static class ServerStart
{
    public static async Task<(string ModelId, string Draft)> StartAsync(WebApplication app, CancellationToken cancellationToken)
    {
        await app.StartAsync(cancellationToken);
        var provider = app.Services.GetRequiredService<BeagleEngineProvider>();
        try { await provider.Engine.Ready.WaitAsync(cancellationToken); }
        catch
        {
            await app.StopAsync(CancellationToken.None);
            throw;
        }
        return (provider.ModelId, provider.Engine.Draft is { } d ? $"draft {d.Architecture}" : "plain decoding");
    }
}
