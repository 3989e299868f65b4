using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Beagle.Server;
using Spectre.Console;
using Spectre.Console.Cli;
using Microsoft.Extensions.Logging;

namespace Beagle.Cli.Commands;

public sealed class LoadTestSettings : ServeSettings
{
    [CommandOption("--url <URL>")]
    [Description("A running server to load (loopback only, e.g. http://127.0.0.1:8080). Default: start one in this process on a free loopback port with the model options, and stop it at the end.")]
    public string? Url { get; init; }

    [CommandOption("--requests <N>")]
    [Description("Requests per concurrency level (default 400).")]
    public int Requests { get; init; } = 400;

    [CommandOption("--concurrency <LIST>")]
    [Description("Comma-separated numbers of concurrent clients, one level each (default 1,4,8).")]
    public string Concurrency { get; init; } = "1,4,8";

    [CommandOption("-n|--max-tokens <N>")]
    [Description("max_tokens of every request (default 64).")]
    public int MaxTokens { get; init; } = 64;

    [CommandOption("--endpoint <NAME>")]
    [Description("completions (raw text, default: natural for story models) or chat.")]
    public string Endpoint { get; init; } = "completions";

    [CommandOption("--prompts <FILE>")]
    [Description("One prompt per line, used in turn. Default: bench/stories-prompts.txt next to the tool.")]
    public string? Prompts { get; init; }

    [CommandOption("--timeout <SECONDS>")]
    [Description("Per-request timeout; a request slower than this counts as an error (default 120).")]
    public int TimeoutSeconds { get; init; } = 120;

    [CommandOption("--json")]
    [Description("Print one JSON document instead of the table.")]
    public bool Json { get; init; }

    public override ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        if (Requests < 1) return ValidationResult.Error("--requests must be >= 1");
        if (MaxTokens < 1) return ValidationResult.Error("--max-tokens must be >= 1");
        if (TimeoutSeconds < 1) return ValidationResult.Error("--timeout must be >= 1");
        if (Endpoint is not ("completions" or "chat")) return ValidationResult.Error("--endpoint must be completions or chat");
        if (Prompts is not null && !File.Exists(Prompts)) return ValidationResult.Error($"--prompts: no file at '{Prompts}'");
        try { _ = Levels; } catch (FormatException e) { return ValidationResult.Error(e.Message); }
        if (Url is not null)
        {
            if (!Uri.TryCreate(Url, UriKind.Absolute, out var u) || u.Scheme is not ("http" or "https")) return ValidationResult.Error($"--url must be an http(s) address, got '{Url}'");
            // A load test is a denial of service to anyone else's server: only this machine's.
            if (!(u.IsLoopback || IPAddress.TryParse(u.Host, out var ip) && IPAddress.IsLoopback(ip))) return ValidationResult.Error($"--url must be a loopback address (127.0.0.1, ::1 or localhost), got '{u.Host}'");
        }
        return ValidationResult.Success();
    }

    internal int[] Levels => Concurrency.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
        .Select(x => int.TryParse(x, NumberStyles.None, CultureInfo.InvariantCulture, out var c) && c is >= 1 and <= 256 ? c
            : throw new FormatException($"--concurrency: '{x}' is not a number of clients in [1, 256]")).ToArray() is { Length: > 0 } l ? l
        : throw new FormatException("--concurrency: give at least one level");
}

/// <summary>One concurrency level's result.</summary>
internal sealed record LoadLevel(int Concurrency, int Requests, int Errors, double WallSeconds, double P50Ms, double P95Ms, double MaxMs,
    long CompletionTokens, double TokensPerSecond, double RequestsPerSecond, double MeanAcceptanceLength, long? RssBeforeBytes, long? RssAfterBytes, string? FirstError,
    int DifferingOutputs, double? VsOneClient);

/// <summary>
/// <c>beagle load-test</c>: a bounded load against a loopback server: for each concurrency level, a fixed number of
/// requests from that many concurrent clients; latency percentiles, aggregate tokens/s, errors, and the server's
/// resident memory (from its /metrics) before and after each level. Every request is greedy, so each answer must equal
/// the one its prompt got alone: a sequential pass over the prompts first (untimed; it also warms the server up) gives
/// the reference, and answers that differ are counted. Stops by itself.
/// </summary>
public sealed class LoadTestCommand : AsyncCommand<LoadTestSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, LoadTestSettings s, CancellationToken cancellationToken)
    {
        var promptsPath = s.Prompts ?? Path.Combine(AppContext.BaseDirectory, "bench", "stories-prompts.txt");
        var prompts = File.ReadAllLines(promptsPath).Where(l => l.Trim().Length > 0).ToArray();
        if (prompts.Length == 0) throw new InvalidDataException($"{promptsPath} holds no prompt");

        Microsoft.AspNetCore.Builder.WebApplication? app = null;
        Uri baseUri;
        string description;
        var server = s.ServerOptions();
        if (s.Url is null)
        {
            // The load test's own server: the settings of `beagle serve`, on a free loopback port, quiet.
            server.Host = "127.0.0.1"; server.Port = 0;
            app = BeagleServer.Create(s.ConfigureModel, server, logging: l => l.SetMinimumLevel(LogLevel.Warning)
                .AddSimpleConsole(o => o.SingleLine = true));
            var (model, draft) = await ServerStart.StartAsync(app, cancellationToken);
            baseUri = app.BaseAddress();
            description = $"{model} ({draft}), in-process server at {baseUri}";
        }
        else { baseUri = new Uri(s.Url.TrimEnd('/') + "/"); description = $"server at {baseUri}"; }

        try
        {
            using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 512, PooledConnectionLifetime = Timeout.InfiniteTimeSpan })
            { BaseAddress = baseUri, Timeout = TimeSpan.FromSeconds(s.TimeoutSeconds) };
            var key = server.ApiKey;
            if (key is not null) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
            var modelId = await ModelId(http, cancellationToken);
            CliConsole.Status($"load test: {description}, model '{modelId}', {s.Requests} {s.Endpoint} requests per level, max_tokens {s.MaxTokens}, levels {string.Join(",", s.Levels)}");
            // Each prompt once, one after another, not counted: the reference answers (greedy: what each prompt gets alone),
            // and the first requests of a process pay one-time costs (JIT, allocator warm-up).
            var reference = new string?[prompts.Length];
            for (int i = 0; i < prompts.Length; i++)
            {
                var r = await Send(http, s, modelId, prompts[i], cancellationToken);
                reference[i] = r.Error is null ? r.Text : throw new InvalidOperationException($"the server failed a request alone: {r.Error}");
            }

            var levels = new List<LoadLevel>();
            foreach (var c in s.Levels)
            {
                var level = await RunLevel(http, s, modelId, prompts, reference, c, levels.FirstOrDefault(l => l.Concurrency == 1)?.TokensPerSecond, cancellationToken);
                levels.Add(level);
                CliConsole.Status($"concurrency {c}: {level.Requests - level.Errors}/{level.Requests} ok, {level.TokensPerSecond:F0} tokens/s, p50 {level.P50Ms:F0} ms, p95 {level.P95Ms:F0} ms");
            }
            if (s.Json) Console.WriteLine(JsonSerializer.Serialize(new { server = description, model = modelId, endpoint = s.Endpoint, max_tokens = s.MaxTokens, levels },
                new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true }));
            else CliConsole.Out.Write(Table(levels));
            if (levels.Any(l => l.DifferingOutputs > 0)) CliConsole.Error.MarkupLine($"[red]{levels.Sum(l => l.DifferingOutputs)} answers differed from their prompt's answer alone[/]");
            return levels.Any(l => l.Errors > 0 || l.DifferingOutputs > 0) ? ExitCodes.RuntimeError : ExitCodes.Ok;
        }
        finally
        {
            if (app is not null) { await app.StopAsync(CancellationToken.None); await app.DisposeAsync(); }
        }
    }

    static Table Table(List<LoadLevel> levels)
    {
        var t = new Table().AddColumns("concurrency", "requests", "errors", "differing", "wall s", "p50 ms", "p95 ms", "max ms", "tokens", "tokens/s", "vs 1 client", "req/s", "mean tau", "RSS before MB", "RSS after MB");
        foreach (var l in levels)
            t.AddRow(l.Concurrency.ToString(), l.Requests.ToString(), l.Errors.ToString(), l.DifferingOutputs.ToString(), l.WallSeconds.ToString("F1"), l.P50Ms.ToString("F0"), l.P95Ms.ToString("F0"),
                l.MaxMs.ToString("F0"), l.CompletionTokens.ToString(), l.TokensPerSecond.ToString("F0"), l.VsOneClient is { } v ? $"{v:F2}x" : "n/a",
                l.RequestsPerSecond.ToString("F1"), l.MeanAcceptanceLength.ToString("F2"), Mb(l.RssBeforeBytes), Mb(l.RssAfterBytes));
        return t;
    }

    static string Mb(long? bytes) => bytes is { } b ? (b / 1048576.0).ToString("F0") : "n/a";

    /// <param name="reference">Each prompt's answer alone.</param>
    /// <param name="oneClient">Tokens/s of the one-client level, when it ran before this one.</param>
    static async Task<LoadLevel> RunLevel(HttpClient http, LoadTestSettings s, string modelId, string[] prompts, string?[] reference, int concurrency, double? oneClient, CancellationToken ct)
    {
        var rssBefore = await Rss(http, ct);
        var latencies = new double[s.Requests];
        var ok = new bool[s.Requests];
        long tokens = 0; double tauSum = 0; int tauCount = 0, differing = 0; string? firstError = null;
        int next = -1;
        var wall = Stopwatch.StartNew();
        var clients = Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < s.Requests)
            {
                var t0 = Stopwatch.GetTimestamp();
                var r = await Send(http, s, modelId, prompts[i % prompts.Length], ct);
                latencies[i] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                ok[i] = r.Error is null;
                if (r.Error is null && r.Text != reference[i % prompts.Length]) Interlocked.Increment(ref differing);
                if (r.Error is not null) Interlocked.CompareExchange(ref firstError, r.Error, null);
                Interlocked.Add(ref tokens, r.Tokens);
                if (r.Tau is { } tau) lock (latencies) { tauSum += tau; tauCount++; }
            }
        }, ct)).ToArray();
        await Task.WhenAll(clients);
        wall.Stop();
        var rssAfter = await Rss(http, ct);
        var sorted = latencies.Order().ToArray();
        double Pct(double p) => sorted[Math.Clamp((int)Math.Ceiling(p * sorted.Length) - 1, 0, sorted.Length - 1)];
        return new LoadLevel(concurrency, s.Requests, ok.Count(x => !x), Math.Round(wall.Elapsed.TotalSeconds, 2), Math.Round(Pct(0.5), 1), Math.Round(Pct(0.95), 1), Math.Round(sorted[^1], 1),
            tokens, Math.Round(tokens / wall.Elapsed.TotalSeconds, 1), Math.Round(s.Requests / wall.Elapsed.TotalSeconds, 2),
            tauCount == 0 ? 0 : Math.Round(tauSum / tauCount, 3), rssBefore, rssAfter, firstError,
            differing, oneClient is { } one && one > 0 ? Math.Round(tokens / wall.Elapsed.TotalSeconds / one, 3) : null);
    }

    /// <summary>One non-streaming request; a non-200 answer or an exception is an error (its first line is kept).</summary>
    static async Task<(long Tokens, double? Tau, string? Text, string? Error)> Send(HttpClient http, LoadTestSettings s, string modelId, string prompt, CancellationToken ct)
    {
        var body = s.Endpoint == "chat"
            ? JsonSerializer.Serialize(new { model = modelId, messages = new[] { new { role = "user", content = prompt } }, max_tokens = s.MaxTokens, temperature = 0 })
            : JsonSerializer.Serialize(new { model = modelId, prompt, max_tokens = s.MaxTokens, temperature = 0 });
        try
        {
            using var response = await http.PostAsync(s.Endpoint == "chat" ? "v1/chat/completions" : "v1/completions", new StringContent(body, Encoding.UTF8, "application/json"), ct);
            var text = await response.Content.ReadAsStringAsync(ct);
            if (response.StatusCode != HttpStatusCode.OK) return (0, null, null, $"{(int)response.StatusCode}: {text.Split('\n')[0]}");
            using var doc = JsonDocument.Parse(text);
            long n = doc.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt64();
            double? tau = doc.RootElement.TryGetProperty("beagle", out var b) && b.GetProperty("target_forwards").GetInt32() > 0 ? b.GetProperty("acceptance_length").GetDouble() : null;
            var choice = doc.RootElement.GetProperty("choices")[0];
            string? answer = s.Endpoint == "chat" ? choice.GetProperty("message").GetProperty("content").GetString() : choice.GetProperty("text").GetString();
            return (n, tau, answer, null);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or JsonException or KeyNotFoundException && !ct.IsCancellationRequested)
        {
            return (0, null, null, $"{e.GetType().Name}: {e.Message}");
        }
    }

    static async Task<string> ModelId(HttpClient http, CancellationToken ct)
    {
        using var response = await http.GetAsync("v1/models", ct);
        var text = await response.Content.ReadAsStringAsync(ct);
        if (!response.IsSuccessStatusCode) throw new InvalidOperationException($"GET {http.BaseAddress}v1/models answered {(int)response.StatusCode}: {text}");
        using var doc = JsonDocument.Parse(text);
        return doc.RootElement.GetProperty("data")[0].GetProperty("id").GetString()!;
    }

    /// <summary>The server's resident memory from its /metrics (process_resident_memory_bytes); null when not exported.</summary>
    static async Task<long?> Rss(HttpClient http, CancellationToken ct)
    {
        using var response = await http.GetAsync("metrics", ct);
        if (!response.IsSuccessStatusCode) return null;
        foreach (var line in (await response.Content.ReadAsStringAsync(ct)).Split('\n'))
            if (line.StartsWith("process_resident_memory_bytes", StringComparison.Ordinal)
                && double.TryParse(line[(line.LastIndexOf(' ') + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out var v))
                return (long)v;
        return null;
    }
}
