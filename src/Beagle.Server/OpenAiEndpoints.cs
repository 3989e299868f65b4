using System.Buffers;
using System.Diagnostics;
using System.Text.Json;
using Beagle.Decoding;
using Beagle.Runtime;
using Beagle.SemanticKernel;
using Beagle.Tokenization;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Beagle.Server;

/// <summary>
/// The OpenAI-compatible endpoints. Each request is validated completely before it reaches the engine (bad input is a
/// 400 with OpenAI's error shape, never a 500), then runs as one concurrent <see cref="BeagleEngine.GenerateAsync(IReadOnlyList{int}, GenerationOptions, GenerationStats?, CancellationToken)"/>
/// call per prompt (a completion request may carry several) whose cancellation token is the HTTP request's: a client that disconnects cancels its generation and frees its
/// place in the engine. The chat prompt is built by the in-process chat client's own mapping (ChatRequestMapper and
/// ChatTemplates), so that a server answer equals the in-process one token for token.
/// </summary>
internal sealed class OpenAiEndpoints(BeagleEngineProvider provider, BeagleServerOptions options, ILogger<OpenAiEndpoints> logger)
{
    const string ChatPath = "/v1/chat/completions", CompletionsPath = "/v1/completions";
    public string ModelId => provider.ModelId;

    public async Task Chat(HttpContext ctx)
    {
        await Handle(ctx, ChatPath, async root =>
        {
            var req = OpenAiRequests.ParseChat(root);
            var engine = ReadyEngine(req.Model);
            var prompt = ChatTemplates.Render(provider.ChatTemplate, ChatRequestMapper.ToTurns(req.Messages, req.Options));
            var gen = Generation(req.Options, prompt.StopStrings, engine);
            var ids = Encode(engine, prompt.Text, gen, "messages", "the prompt");
            await Run(ctx, ChatPath, engine, [new Choice(ids, null)], gen, req.Stream, req.IncludeUsage, chat: true);
        });
    }

    public async Task Completions(HttpContext ctx)
    {
        await Handle(ctx, CompletionsPath, async root =>
        {
            var req = OpenAiRequests.ParseCompletion(root, options.MaxPromptsPerRequest);
            var engine = ReadyEngine(req.Model);
            ChatRequestMapper.RefuseUnsupported(req.Options);
            var gen = Generation(req.Options, [], engine);
            // Every prompt is checked before any of them reaches the engine: a request is refused whole or run whole.
            var choices = new Choice[req.Prompts.Count];
            for (int i = 0; i < choices.Length; i++)
            {
                var p = req.Prompts[i];
                var ids = p.Text is { } text
                    ? Encode(engine, text, gen, "prompt", p.Where == "prompt" ? "the prompt" : $"'{p.Where}'")
                    : CheckIds(engine, p.Ids!, p.Where);
                choices[i] = new Choice(ids, !req.Echo ? null : p.Text ?? engine.Tokenizer.Decode(ids));
            }
            await Run(ctx, CompletionsPath, engine, choices, gen, req.Stream, req.IncludeUsage, chat: false);
        });
    }

    /// <summary>Token ids a client sent: each inside the target's vocabulary (the message names the offending index), fewer than the context holds.</summary>
    static int[] CheckIds(BeagleEngine engine, int[] ids, string where)
    {
        int vocab = engine.TargetConfig.VocabSize, ctx = engine.TargetConfig.MaxSeqLen;
        for (int j = 0; j < ids.Length; j++)
            if ((uint)ids[j] >= (uint)vocab)
                throw OpenAiError.BadRequest($"'{where}[{j}]' is token id {ids[j]}, outside this model's vocabulary (ids 0 to {vocab - 1})", "prompt", "invalid_token_id");
        if (ids.Length >= ctx) throw ContextExceeded($"'{where}'", ids.Length, ctx, "prompt");
        return ids;
    }

    /// <summary>The 400 for a prompt of <paramref name="tokens"/> tokens that leaves no room in a context of <paramref name="ctx"/>: says by how much.</summary>
    static OpenAiError ContextExceeded(string label, int tokens, int ctx, string param) =>
        OpenAiError.BadRequest($"{label} has {tokens} tokens but the model's context is {ctx} tokens and leaves room for at most {ctx - 1}: " +
            $"shorten it by {tokens - (ctx - 1)} tokens or more", param, "context_length_exceeded");

    public Task Models(HttpContext ctx) => WriteJson(ctx, 200, w =>
    {
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        WriteModel(w);
        w.WriteEndArray();
        w.WriteEndObject();
    });

    public Task Model(HttpContext ctx, string id) => id == ModelId
        ? WriteJson(ctx, 200, WriteModel)
        : WriteError(ctx, UnknownModel(id));

    void WriteModel(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString("id", ModelId);
        w.WriteString("object", "model");
        w.WriteNumber("created", Started);
        w.WriteString("owned_by", "beagle");
        w.WriteEndObject();
    }

    static readonly long Started = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    OpenAiError UnknownModel(string id) =>
        new(404, $"the model '{id}' does not exist on this server; it serves '{ModelId}' (GET /v1/models)", OpenAiError.NotFound, "model", "model_not_found");

    /// <summary>The engine, once the model is loaded; 503 while it loads or when loading failed; 404 for another model's name.</summary>
    BeagleEngine ReadyEngine(string? model)
    {
        if (model is not null && model != ModelId) throw UnknownModel(model);
        var engine = provider.Engine;
        var ready = engine.Ready;
        if (ready.IsFaulted)
            throw new OpenAiError(503, $"the model failed to load: {ready.Exception!.InnerException!.Message}", OpenAiError.Unavailable, null, "model_load_failed");
        if (!ready.IsCompleted) throw new OpenAiError(503, "the model is still loading; retry in a moment (GET /health/ready says when it is ready)", OpenAiError.Unavailable, null, "model_loading");
        return engine;
    }

    GenerationOptions Generation(Microsoft.Extensions.AI.ChatOptions o, IReadOnlyList<string> templateStops, BeagleEngine engine)
    {
        if (o.MaxOutputTokens is { } max && max > options.MaxTokensLimit)
            throw OpenAiError.BadRequest($"max_tokens {max} is above this server's limit of {options.MaxTokensLimit} (MaxTokensLimit, `beagle serve --max-tokens-limit`)", "max_tokens", "max_tokens_limit");
        return ChatRequestMapper.ToGeneration(o, templateStops, Math.Min(provider.Options.DefaultMaxTokens, options.MaxTokensLimit),
            engine.TargetConfig.MaxSeqLen, engine.Draft is not null);
    }

    /// <summary>Characters of a prompt encoded to decide that it cannot fit, per context token (tokens rarely exceed 16 characters).</summary>
    const int ProbeCharsPerToken = 16;

    /// <summary>The prompt's token ids exactly as the engine would encode the text (BOS as the options say); too long is a 400 saying by how much.</summary>
    /// <param name="label">The prompt as the messages name it: "the prompt", or "'prompt[2]'" for one of several.</param>
    static int[] Encode(BeagleEngine engine, string text, GenerationOptions gen, string param, string label)
    {
        int ctx = engine.TargetConfig.MaxSeqLen;
        bool bos = gen.AddBos && engine.Tokenizer.BosId >= 0;
        // BPE merging (llama2.c's) costs time quadratic in the text: a text whose head alone fills the context is
        // refused on that head, so a megabyte of prompt costs what a few thousand characters do.
        int probe = ctx * ProbeCharsPerToken;
        if (text.Length > probe)
        {
            if (char.IsHighSurrogate(text[probe - 1])) probe--;
            int head = engine.Tokenizer.Encode(text[..probe], bos).Length;
            if (head >= ctx)
                throw OpenAiError.BadRequest($"{label} has more than {head} tokens (its first {probe} of {text.Length} characters have {head}) but the model's context is {ctx} tokens " +
                    $"and leaves room for at most {ctx - 1}: shorten it by more than {head - (ctx - 1)} tokens", param, "context_length_exceeded");
        }
        var ids = engine.Tokenizer.Encode(text, bos);
        if (ids.Length == 0) throw OpenAiError.BadRequest($"{label} is empty and this model's tokenizer adds no BOS token: give some text", param);
        if (ids.Length >= ctx) throw ContextExceeded(label, ids.Length, ctx, param);
        return ids;
    }

    /// <summary>Reads the body (size-limited), runs <paramref name="body"/>, and turns refusals into OpenAI errors.</summary>
    async Task Handle(HttpContext ctx, string endpoint, Func<JsonElement, Task> body)
    {
        try
        {
            if (ctx.Request.ContentLength is { } length && length > options.MaxRequestBytes)
            {
                await DrainModestExcess(ctx, length);
                throw TooLarge(length);
            }
            JsonDocument doc;
            try { doc = JsonDocument.Parse(await ReadBody(ctx)); }
            catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge) { throw TooLarge(null); }
            catch (JsonException e) { throw OpenAiError.BadRequest($"the request body is not valid JSON: {e.Message}", null, "invalid_json"); }
            using (doc) await body(doc.RootElement);
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested) { /* the client left; nothing to answer */ }
        catch (Exception e)
        {
            var error = OpenAiError.From(e, OpenAiRequests.ParamName);
            if (error.Status >= 500 && e is not OpenAiError) logger.LogError(e, "{Endpoint}: request failed", endpoint);
            if (ctx.Response.HasStarted) { logger.LogWarning("{Endpoint}: failed after the response started: {Message}", endpoint, e.Message); return; }
            if (error.Status == 429) ctx.Response.Headers.RetryAfter = "1";
            await WriteError(ctx, error);
        }
        finally
        {
            ServerMetrics.Requests.Add(1, new("endpoint", endpoint), new("status", ctx.RequestAborted.IsCancellationRequested && !ctx.Response.HasStarted ? 499 : ctx.Response.StatusCode), ServerMetrics.Model(ModelId));
        }
    }

    /// <summary>
    /// The body, at most MaxRequestBytes. A body without a length (chunked) that turns out larger is read on to twice the
    /// limit and discarded before the 413 (as <see cref="DrainModestExcess"/> does for a declared length); beyond that,
    /// the server's own limit ends the connection.
    /// </summary>
    async Task<ReadOnlyMemory<byte>> ReadBody(HttpContext ctx)
    {
        long limit = options.MaxRequestBytes;
        if (ctx.Request.ContentLength is null && ctx.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size)
            size.MaxRequestBodySize = 2 * limit;
        var body = new ArrayBufferWriter<byte>();
        long total = 0;
        while (true)
        {
            var span = body.GetMemory(16 * 1024);
            int n = await ctx.Request.Body.ReadAsync(span, ctx.RequestAborted);
            if (n == 0) break;
            total += n;
            if (total <= limit) body.Advance(n);   // past the limit the bytes are read only to be discarded
        }
        if (total > limit) throw TooLarge(null);
        return body.WrittenMemory;
    }

    /// <summary>
    /// Reads and discards a body at most twice the limit before the 413 is written. A client writes its whole body before
    /// it reads the answer; answering first and closing the connection under it makes the client's write fail (a broken
    /// pipe or a reset) before it ever sees the 413. A larger body is not read: the connection is closed instead.
    /// </summary>
    async Task DrainModestExcess(HttpContext ctx, long length)
    {
        if (length > 2 * (long)options.MaxRequestBytes) return;
        var size = ctx.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>();
        if (size is null || size.IsReadOnly) return;
        size.MaxRequestBodySize = length;
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(16 * 1024);
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted);
            timeout.CancelAfter(TimeSpan.FromSeconds(5));
            while (await ctx.Request.Body.ReadAsync(buffer, timeout.Token) > 0) { }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or BadHttpRequestException) { /* the 413 goes out regardless */ }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(buffer); }
    }

    OpenAiError TooLarge(long? length) => new(413, $"the request body {(length is { } l ? $"of {l} bytes " : "")}is larger than this server's limit of {options.MaxRequestBytes} bytes (MaxRequestBytes, `beagle serve --max-request-bytes`)",
        OpenAiError.InvalidRequest, null, "request_too_large");

    /// <summary>One prompt's generation: its token ids (validated) and, for an echoing completion, the text that opens its choice.</summary>
    sealed record Choice(int[] Ids, string? Echo);

    /// <summary>A choice's new text, or its end (<paramref name="Done"/>), in the order the engine produced them.</summary>
    readonly record struct ChoiceEvent(int Index, string Text, bool Done);

    /// <summary>How many events the choices of one request may produce ahead of the response writer (then their generations pause).</summary>
    const int EventBuffer = 16;

    /// <summary>
    /// Runs a request's generations — one per choice, all handed to the engine at once, so that it batches them like
    /// concurrent requests and each gets the output it would get alone — and writes the response. The response starts
    /// only with the first generated text of any choice (or the end), so that everything the engine refuses up to then
    /// (a full queue for any of the choices, a prompt it rejects) still gets its own status code; a failure of one choice
    /// cancels the others.
    /// </summary>
    async Task Run(HttpContext ctx, string endpoint, BeagleEngine engine, IReadOnlyList<Choice> choices, GenerationOptions gen, bool stream, bool includeUsage, bool chat)
    {
        var ct = ctx.RequestAborted;
        int n = choices.Count;
        var stats = new GenerationStats[n];
        var texts = new System.Text.StringBuilder[n];
        var completed = new bool[n];   // generation ran to its end (set by the producers)
        var ended = new bool[n];       // its end was read from the events (by the writer)
        for (int i = 0; i < n; i++) { stats[i] = new GenerationStats(); texts[i] = new System.Text.StringBuilder(choices[i].Echo); }
        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var model = ServerMetrics.Model(ModelId);
        long t0 = Stopwatch.GetTimestamp();
        bool firstText = true;

        // Bounded: a reader that stops reading pauses the generations (through the engine's own stream buffers) rather
        // than letting them fill the server's memory.
        var events = System.Threading.Channels.Channel.CreateBounded<ChoiceEvent>(new System.Threading.Channels.BoundedChannelOptions(EventBuffer)
        {
            SingleReader = true, SingleWriter = n == 1, FullMode = System.Threading.Channels.BoundedChannelFullMode.Wait,
        });
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
        Exception? failure = null;

        async Task Produce(int i)
        {
            try
            {
                await foreach (var chunk in engine.GenerateAsync(choices[i].Ids, gen, stats[i], cancel.Token))
                    if (chunk.Text.Length > 0) await events.Writer.WriteAsync(new ChoiceEvent(i, chunk.Text, false), cancel.Token);
                completed[i] = true;
                await events.Writer.WriteAsync(new ChoiceEvent(i, "", true), cancel.Token);
            }
            catch (Exception e)
            {
                // The first failure is the request's; the cancellations it causes in the other choices are not.
                if (!(e is OperationCanceledException && cancel.IsCancellationRequested)) Interlocked.CompareExchange(ref failure, e, null);
                cancel.Cancel();
            }
            finally
            {
                ServerMetrics.ActiveGenerations.Add(-1, model);
                BeagleMetrics.Record(ModelId, stats[i], completed[i]);
            }
        }

        ServerMetrics.ActiveGenerations.Add(n, model);
        // Each call enqueues its generation before its first await (the engine is ready), so all of the request's
        // choices are in the engine's queue, in order, before the first event is read.
        var producers = new Task[n];
        for (int i = 0; i < n; i++) producers[i] = Produce(i);
        var all = Task.WhenAll(producers).ContinueWith(_ => events.Writer.TryComplete(), TaskScheduler.Default);
        try
        {
            try
            {
                await foreach (var e in events.Reader.ReadAllAsync(ct))
                {
                    if (e.Done)
                    {
                        ended[e.Index] = true;
                        if (stream && !firstText) await WriteEvent(ctx, w => Chunk(w, id, created, chat, e.Index, "", Finish(stats[e.Index]), stats[e.Index]));
                        continue;
                    }
                    if (firstText)
                    {
                        ServerMetrics.FirstTokenSeconds.Record(Stopwatch.GetElapsedTime(t0).TotalSeconds, model);
                        firstText = false;
                        if (stream) await StartStream(ctx, id, created, chat, choices, ended, stats);
                    }
                    if (stream) await WriteEvent(ctx, w => Chunk(w, id, created, chat, e.Index, e.Text, finish: null, stats: null));
                    else texts[e.Index].Append(e.Text);
                }
            }
            finally
            {
                // Also when writing failed (the client left): the generations must stop and the producers end.
                cancel.Cancel();
                await all;
            }
            ct.ThrowIfCancellationRequested();
            if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            ServerMetrics.Cancelled.Add(1, model);
            throw;
        }
        catch (Exception e) when (stream && ctx.Response.HasStarted)
        {
            // Mid-stream the status is sent: say what happened in the stream itself, then end it.
            logger.LogWarning(e, "{Endpoint}: generation failed mid-stream", endpoint);
            var error = OpenAiError.From(e, OpenAiRequests.ParamName);
            await WriteEvent(ctx, error.WriteTo);
            return;
        }
        finally
        {
            ServerMetrics.RequestSeconds.Record(Stopwatch.GetElapsedTime(t0).TotalSeconds, model);
        }

        if (stream)
        {
            // No text at all: the stream starts now, with every choice's end.
            if (firstText) await StartStream(ctx, id, created, chat, choices, ended, stats);
            if (includeUsage) await WriteEvent(ctx, w => UsageChunk(w, id, created, chat, stats));
            await ctx.Response.WriteAsync("data: [DONE]\n\n", ct);
            await ctx.Response.Body.FlushAsync(ct);
            return;
        }
        await WriteJson(ctx, 200, w =>
        {
            w.WriteStartObject();
            Header(w, id, chat ? "chat.completion" : "text_completion", created);
            w.WriteStartArray("choices");
            for (int i = 0; i < n; i++)
            {
                w.WriteStartObject();
                w.WriteNumber("index", i);
                if (chat)
                {
                    w.WriteStartObject("message");
                    w.WriteString("role", "assistant");
                    w.WriteString("content", texts[i].ToString());
                    w.WriteNull("refusal");
                    w.WriteEndObject();
                }
                else w.WriteString("text", texts[i].ToString());
                w.WriteNull("logprobs");
                w.WriteString("finish_reason", Finish(stats[i]));
                Beagle(w, stats[i]);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            Usage(w, stats);
            // A single choice's own "beagle" object also at the top, where single-prompt clients read it.
            if (n == 1) Beagle(w, stats[0]);
            w.WriteEndObject();
        });
    }

    static string Finish(GenerationStats s) => s.FinishReason is FinishReason.Length or FinishReason.ContextFull ? "length" : "stop";

    /// <summary>
    /// Opens the event stream: a chat stream with the assistant's role (OpenAI's first delta), a completion with each
    /// echoed prompt; then the end of every choice that finished before the first text (their Done events were read
    /// before the stream existed).
    /// </summary>
    async Task StartStream(HttpContext ctx, string id, long created, bool chat, IReadOnlyList<Choice> choices, bool[] ended, GenerationStats[] stats)
    {
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "text/event-stream; charset=utf-8";
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Response.Headers["X-Accel-Buffering"] = "no";
        for (int i = 0; i < choices.Count; i++)
        {
            int index = i;
            if (chat) await WriteEvent(ctx, w => Chunk(w, id, created, chat, index, "", finish: null, stats: null, role: true));
            else if (!string.IsNullOrEmpty(choices[i].Echo)) await WriteEvent(ctx, w => Chunk(w, id, created, chat, index, choices[index].Echo!, finish: null, stats: null));
        }
        for (int i = 0; i < choices.Count; i++)
        {
            int index = i;
            if (ended[i]) await WriteEvent(ctx, w => Chunk(w, id, created, chat, index, "", Finish(stats[index]), stats[index]));
        }
    }

    void Header(Utf8JsonWriter w, string id, string obj, long created)
    {
        w.WriteString("id", id);
        w.WriteString("object", obj);
        w.WriteNumber("created", created);
        w.WriteString("model", ModelId);
    }

    void Chunk(Utf8JsonWriter w, string id, long created, bool chat, int index, string text, string? finish, GenerationStats? stats, bool role = false)
    {
        w.WriteStartObject();
        Header(w, id, chat ? "chat.completion.chunk" : "text_completion", created);
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", index);
        if (chat)
        {
            w.WriteStartObject("delta");
            if (role) w.WriteString("role", "assistant");
            if (role || text.Length > 0) w.WriteString("content", text);
            w.WriteEndObject();
        }
        else w.WriteString("text", text);
        w.WriteNull("logprobs");
        if (finish is null) w.WriteNull("finish_reason"); else w.WriteString("finish_reason", finish);
        w.WriteEndObject();
        w.WriteEndArray();
        if (stats is not null) Beagle(w, stats);
        w.WriteEndObject();
    }

    void UsageChunk(Utf8JsonWriter w, string id, long created, bool chat, GenerationStats[] stats)
    {
        w.WriteStartObject();
        Header(w, id, chat ? "chat.completion.chunk" : "text_completion", created);
        w.WriteStartArray("choices");
        w.WriteEndArray();
        Usage(w, stats);
        w.WriteEndObject();
    }

    /// <summary>OpenAI's usage: summed over the request's choices.</summary>
    static void Usage(Utf8JsonWriter w, GenerationStats[] stats)
    {
        int prompt = stats.Sum(s => s.PromptTokens), completion = stats.Sum(s => s.NewTokens);
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", prompt);
        w.WriteNumber("completion_tokens", completion);
        w.WriteNumber("total_tokens", prompt + completion);
        w.WriteEndObject();
    }

    /// <summary>
    /// The "beagle" extension: what the engine did for this request. <c>speculative</c> says whether a draft round ran
    /// (not whether one was allowed); <c>acceptance_length</c> is tokens per target forward (1 for plain decoding).
    /// </summary>
    static void Beagle(Utf8JsonWriter w, GenerationStats s)
    {
        w.WriteStartObject("beagle");
        w.WriteBoolean("speculative", s.Speculative);
        w.WriteNumber("draft_rounds", s.DraftRounds);
        w.WriteNumber("accepted_draft_tokens", s.AcceptedDraftTokens);
        w.WriteNumber("target_forwards", s.TargetForwards);
        w.WriteNumber("acceptance_length", Math.Round(s.AcceptanceLength, 4));
        w.WriteNumber("tokens_per_second", Math.Round(s.TokensPerSecond, 1));
        w.WriteString("finish_reason", s.FinishReason.ToString());
        w.WriteEndObject();
    }

    static async Task WriteEvent(HttpContext ctx, Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        buffer.Write("data: "u8);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping })) write(w);
        buffer.Write("\n\n"u8);
        await ctx.Response.Body.WriteAsync(buffer.WrittenMemory, ctx.RequestAborted);
        await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
    }

    internal static async Task WriteJson(HttpContext ctx, int status, Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(512);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping })) write(w);
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json; charset=utf-8";
        ctx.Response.ContentLength = buffer.WrittenCount;
        await ctx.Response.Body.WriteAsync(buffer.WrittenMemory, ctx.RequestAborted);
    }

    internal static Task WriteError(HttpContext ctx, OpenAiError error) => WriteJson(ctx, error.Status, error.WriteTo);
}
