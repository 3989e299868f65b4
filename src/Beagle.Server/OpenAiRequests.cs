using System.Text.Json;
using Beagle.SemanticKernel;
using Microsoft.Extensions.AI;

namespace Beagle.Server;

/// <summary>A parsed <c>POST /v1/chat/completions</c>: M.E.AI messages and options, so that the server maps them with the very code the in-process chat client uses.</summary>
internal sealed record ChatCompletionRequest(string? Model, List<ChatMessage> Messages, ChatOptions Options, bool Stream, bool IncludeUsage);

/// <summary>
/// A parsed <c>POST /v1/completions</c>: raw text in, raw text out (no chat template), the same sampling knobs. Each
/// prompt yields one choice, in order.
/// </summary>
internal sealed record CompletionRequest(string? Model, IReadOnlyList<CompletionPrompt> Prompts, ChatOptions Options, bool Stream, bool IncludeUsage, bool Echo);

/// <summary>
/// One prompt of a completion request: text (encoded with BOS as the options say) or token ids (used as given, not yet
/// checked against the vocabulary, which only the loaded model knows). <paramref name="Where"/> names it in errors:
/// "prompt" for the request's only prompt, "prompt[i]" for one of an array.
/// </summary>
internal sealed record CompletionPrompt(string? Text, int[]? Ids, string Where);

/// <summary>
/// Reads OpenAI request bodies into typed requests. Every type error is a 400 naming the field; fields the engine
/// cannot honour (tools, JSON mode, logprobs, n &gt; 1, logit_bias) are refused rather than ignored; fields that do not
/// change the output (user, store, metadata, service_tier, ...) are accepted and ignored, as clients send them routinely.
/// </summary>
internal static class OpenAiRequests
{
    /// <summary>Beagle's extension fields (same names as the in-process chat client's ChatOptions.AdditionalProperties).</summary>
    static readonly string[] ExtensionKeys =
        [ChatRequestMapper.SpeculativeKey, ChatRequestMapper.TreeTokensKey, ChatRequestMapper.TreeDepthKey, ChatRequestMapper.TreeTopKKey, ChatRequestMapper.TreeMinProbKey];

    /// <summary>The request field behind a ChatOptions property (for the "param" of a mapping error).</summary>
    public static string? ParamName(string? optionName) => optionName switch
    {
        nameof(ChatOptions.MaxOutputTokens) => "max_tokens",
        nameof(ChatOptions.Temperature) => "temperature",
        nameof(ChatOptions.TopP) => "top_p",
        nameof(ChatOptions.TopK) => "top_k",
        nameof(ChatOptions.Seed) => "seed",
        nameof(ChatOptions.StopSequences) => "stop",
        "messages" => "messages",
        null => null,
        var other => other,
    };

    public static ChatCompletionRequest ParseChat(JsonElement root)
    {
        RequireObject(root);
        if (!root.TryGetProperty("messages", out var msgs) || msgs.ValueKind == JsonValueKind.Null)
            throw OpenAiError.BadRequest("'messages' is required: an array of {role, content} objects", "messages");
        if (msgs.ValueKind != JsonValueKind.Array) throw OpenAiError.BadRequest($"'messages' must be an array, got {Kind(msgs)}", "messages");
        var messages = new List<ChatMessage>();
        int i = 0;
        foreach (var m in msgs.EnumerateArray())
        {
            messages.Add(ParseMessage(m, $"messages[{i}]"));
            i++;
        }
        if (messages.Count == 0) throw OpenAiError.BadRequest("'messages' is empty: give at least one message", "messages");
        if (Has(root, "tools", out var tools) && tools.ValueKind == JsonValueKind.Array && tools.GetArrayLength() > 0
            || Has(root, "functions", out var fns) && fns.ValueKind == JsonValueKind.Array && fns.GetArrayLength() > 0)
            throw new OpenAiError(400, "function calling is not supported by the Beagle server: remove 'tools' (and 'functions')", OpenAiError.InvalidRequest, "tools", "unsupported");
        if (Has(root, "response_format", out var rf))
        {
            var type = rf.ValueKind == JsonValueKind.Object && rf.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            if (type is not "text")
                throw new OpenAiError(400, $"structured (JSON) output is not supported by the Beagle server: 'response_format' must be absent or {{\"type\":\"text\"}}, got {rf.GetRawText()}", OpenAiError.InvalidRequest, "response_format", "unsupported");
        }
        var (stream, includeUsage) = Streaming(root);
        var options = Sampling(root);
        if (Has(root, "max_completion_tokens", out var mct))
        {
            int v = Int(mct, "max_completion_tokens");
            if (options.MaxOutputTokens is { } mt && mt != v)
                throw OpenAiError.BadRequest($"'max_tokens' ({mt}) and 'max_completion_tokens' ({v}) disagree: give one of them", "max_completion_tokens");
            options.MaxOutputTokens = v;
        }
        return new ChatCompletionRequest(Model(root), messages, options, stream, includeUsage);
    }

    /// <param name="maxPrompts">The most prompts one request may carry (BeagleServerOptions.MaxPromptsPerRequest).</param>
    public static CompletionRequest ParseCompletion(JsonElement root, int maxPrompts)
    {
        RequireObject(root);
        if (!root.TryGetProperty("prompt", out var p) || p.ValueKind == JsonValueKind.Null)
            throw OpenAiError.BadRequest("'prompt' is required: a string (use \"\" to start from BOS), an array of strings, an array of token ids or an array of arrays of token ids", "prompt");
        var prompts = Prompts(p, maxPrompts);
        if (Has(root, "suffix", out var sf) && !(sf.ValueKind == JsonValueKind.String && sf.GetString()!.Length == 0))
            throw new OpenAiError(400, "'suffix' (insertion) is not supported by the Beagle server: leave it unset or \"\"", OpenAiError.InvalidRequest, "suffix", "unsupported");
        if (Has(root, "best_of", out var bo) && Int(bo, "best_of") != 1)
            throw new OpenAiError(400, "'best_of' must be 1 (the server generates one completion per prompt and cannot rank candidates without logprobs)", OpenAiError.InvalidRequest, "best_of", "unsupported");
        bool echo = Has(root, "echo", out var e) && Bool(e, "echo");
        var (stream, includeUsage) = Streaming(root);
        return new CompletionRequest(Model(root), prompts, Sampling(root), stream, includeUsage, echo);
    }

    /// <summary>
    /// OpenAI's four prompt forms: a string, an array of strings, an array of token ids (one prompt), an array of arrays
    /// of token ids. Each element's type is checked (the message names its index); an empty array of either kind and more
    /// prompts than <paramref name="maxPrompts"/> are refused.
    /// </summary>
    static List<CompletionPrompt> Prompts(JsonElement p, int maxPrompts)
    {
        const string Forms = "a string, an array of strings, an array of token ids or an array of arrays of token ids";
        if (p.ValueKind == JsonValueKind.String) return [new(p.GetString()!, null, "prompt")];
        if (p.ValueKind != JsonValueKind.Array) throw OpenAiError.BadRequest($"'prompt' must be {Forms}, got {Kind(p)}", "prompt");
        int count = p.GetArrayLength();
        if (count == 0) throw OpenAiError.BadRequest($"'prompt' is an empty array: give {Forms}", "prompt");
        var first = p[0];
        if (first.ValueKind == JsonValueKind.Number) return [new(null, TokenIds(p, "prompt"), "prompt")];
        if (first.ValueKind is not (JsonValueKind.String or JsonValueKind.Array))
            throw OpenAiError.BadRequest($"'prompt' must be {Forms}; 'prompt[0]' is {Kind(first)}", "prompt");
        if (count > maxPrompts)
            throw OpenAiError.BadRequest($"'prompt' holds {count} prompts but this server takes at most {maxPrompts} per request (MaxPromptsPerRequest, `beagle serve --max-prompts`): split them over several requests",
                "prompt", "too_many_prompts");
        var prompts = new List<CompletionPrompt>(count);
        bool strings = first.ValueKind == JsonValueKind.String;
        int i = 0;
        foreach (var x in p.EnumerateArray())
        {
            string where = $"prompt[{i}]";
            if (strings)
                prompts.Add(x.ValueKind == JsonValueKind.String ? new(x.GetString()!, null, where)
                    : throw OpenAiError.BadRequest($"'{where}' must be a string like 'prompt[0]' (an array of prompts is all strings or all arrays of token ids), got {Kind(x)}", "prompt"));
            else
            {
                if (x.ValueKind != JsonValueKind.Array)
                    throw OpenAiError.BadRequest($"'{where}' must be an array of token ids like 'prompt[0]' (an array of prompts is all strings or all arrays of token ids), got {Kind(x)}", "prompt");
                if (x.GetArrayLength() == 0) throw OpenAiError.BadRequest($"'{where}' is an empty array of token ids: give at least one token (e.g. BOS)", "prompt");
                prompts.Add(new(null, TokenIds(x, where), where));
            }
            i++;
        }
        return prompts;
    }

    /// <summary>An array of token ids: each an integer (its range is the model's business, checked once it is known).</summary>
    static int[] TokenIds(JsonElement a, string where)
    {
        var ids = new int[a.GetArrayLength()];
        int j = 0;
        foreach (var x in a.EnumerateArray())
        {
            ids[j] = x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out var id) ? id
                : throw OpenAiError.BadRequest($"'{where}[{j}]' must be a token id (an integer), got {x.GetRawText()}", "prompt");
            j++;
        }
        return ids;
    }

    static ChatMessage ParseMessage(JsonElement m, string where)
    {
        if (m.ValueKind != JsonValueKind.Object) throw OpenAiError.BadRequest($"'{where}' must be an object with 'role' and 'content', got {Kind(m)}", "messages");
        if (!m.TryGetProperty("role", out var r) || r.ValueKind != JsonValueKind.String)
            throw OpenAiError.BadRequest($"'{where}.role' is required: system, developer, user or assistant", "messages");
        var roleName = r.GetString()!;
        ChatRole role = roleName switch
        {
            "system" or "developer" => ChatRole.System,
            "user" => ChatRole.User,
            "assistant" => ChatRole.Assistant,
            "tool" or "function" => throw new OpenAiError(400, $"'{where}.role' is '{roleName}': tool messages need function calling, which the Beagle server does not support", OpenAiError.InvalidRequest, "messages", "unsupported"),
            _ => throw OpenAiError.BadRequest($"'{where}.role' must be system, developer, user or assistant, got '{roleName}'", "messages"),
        };
        if (Has(m, "tool_calls", out var tc) && tc.ValueKind == JsonValueKind.Array && tc.GetArrayLength() > 0 || Has(m, "function_call", out _))
            throw new OpenAiError(400, $"'{where}' holds tool calls: function calling is not supported by the Beagle server", OpenAiError.InvalidRequest, "messages", "unsupported");
        if (!m.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null) return new ChatMessage(role, "");
        if (c.ValueKind == JsonValueKind.String) return new ChatMessage(role, c.GetString());
        if (c.ValueKind != JsonValueKind.Array) throw OpenAiError.BadRequest($"'{where}.content' must be a string or an array of text parts, got {Kind(c)}", "messages");
        var parts = new List<AIContent>();
        int j = 0;
        foreach (var part in c.EnumerateArray())
        {
            var type = part.ValueKind == JsonValueKind.Object && part.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            if (type != "text")
                throw new OpenAiError(400, $"'{where}.content[{j}]' is of type '{type ?? Kind(part)}': only text is supported by the Beagle server", OpenAiError.InvalidRequest, "messages", "unsupported");
            if (!part.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
                throw OpenAiError.BadRequest($"'{where}.content[{j}].text' must be a string", "messages");
            parts.Add(new TextContent(text.GetString()));
            j++;
        }
        return new ChatMessage(role, parts);
    }

    /// <summary>The sampling knobs shared by both endpoints, as ChatOptions (mapped to the engine by ChatRequestMapper).</summary>
    static ChatOptions Sampling(JsonElement root)
    {
        var o = new ChatOptions();
        if (Has(root, "max_tokens", out var mt)) o.MaxOutputTokens = Int(mt, "max_tokens");
        if (Has(root, "temperature", out var temp)) o.Temperature = Float(temp, "temperature");
        if (Has(root, "top_p", out var tp)) o.TopP = Float(tp, "top_p");
        if (Has(root, "top_k", out var tk)) o.TopK = Int(tk, "top_k");
        if (Has(root, "seed", out var seed))
            o.Seed = seed.ValueKind == JsonValueKind.Number && seed.TryGetInt64(out var s) ? s : throw OpenAiError.BadRequest($"'seed' must be an integer, got {seed.GetRawText()}", "seed");
        if (Has(root, "frequency_penalty", out var fp)) o.FrequencyPenalty = Float(fp, "frequency_penalty");
        if (Has(root, "presence_penalty", out var pp)) o.PresencePenalty = Float(pp, "presence_penalty");
        if (Has(root, "stop", out var stop))
        {
            var list = new List<string>();
            if (stop.ValueKind == JsonValueKind.String) list.Add(stop.GetString()!);
            else if (stop.ValueKind == JsonValueKind.Array)
                foreach (var x in stop.EnumerateArray())
                    list.Add(x.ValueKind == JsonValueKind.String ? x.GetString()! : throw OpenAiError.BadRequest($"'stop' must be a string or an array of strings, got an element {x.GetRawText()}", "stop"));
            else throw OpenAiError.BadRequest($"'stop' must be a string or an array of strings, got {Kind(stop)}", "stop");
            o.StopSequences = list;
        }
        if (Has(root, "n", out var n) && Int(n, "n") != 1) throw new OpenAiError(400, "'n' must be 1 (the server generates one choice per prompt; for several completions of one prompt send several requests, they run concurrently)", OpenAiError.InvalidRequest, "n", "unsupported");
        if (Has(root, "logprobs", out var lp) && lp.ValueKind != JsonValueKind.False && !(lp.ValueKind == JsonValueKind.Number && lp.GetRawText() == "0"))
            throw new OpenAiError(400, "'logprobs' is not supported by the Beagle server", OpenAiError.InvalidRequest, "logprobs", "unsupported");
        if (Has(root, "top_logprobs", out _)) throw new OpenAiError(400, "'top_logprobs' is not supported by the Beagle server", OpenAiError.InvalidRequest, "top_logprobs", "unsupported");
        if (Has(root, "logit_bias", out var lb) && !(lb.ValueKind == JsonValueKind.Object && !lb.EnumerateObject().Any()))
            throw new OpenAiError(400, "'logit_bias' is not supported by the Beagle server: it decodes the target's own distribution", OpenAiError.InvalidRequest, "logit_bias", "unsupported");
        foreach (var key in ExtensionKeys)
            if (Has(root, key, out var v)) (o.AdditionalProperties ??= [])[key] = v.Clone();
        return o;
    }

    static (bool Stream, bool IncludeUsage) Streaming(JsonElement root)
    {
        bool stream = Has(root, "stream", out var s) && Bool(s, "stream");
        bool usage = false;
        if (Has(root, "stream_options", out var so))
        {
            if (so.ValueKind != JsonValueKind.Object) throw OpenAiError.BadRequest($"'stream_options' must be an object, got {Kind(so)}", "stream_options");
            if (!stream) throw OpenAiError.BadRequest("'stream_options' is only allowed with \"stream\": true", "stream_options");
            usage = Has(so, "include_usage", out var iu) && Bool(iu, "stream_options.include_usage");
        }
        return (stream, usage);
    }

    static string? Model(JsonElement root) => Has(root, "model", out var m)
        ? m.ValueKind == JsonValueKind.String ? m.GetString() : throw OpenAiError.BadRequest($"'model' must be a string, got {Kind(m)}", "model")
        : null;

    static void RequireObject(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object) throw OpenAiError.BadRequest($"the request body must be a JSON object, got {Kind(root)}", null, "invalid_json");
    }

    /// <summary>Present and not null (OpenAI clients send explicit nulls for unset fields).</summary>
    static bool Has(JsonElement o, string name, out JsonElement value) =>
        o.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null;

    static int Int(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out var i) ? i : throw OpenAiError.BadRequest($"'{name}' must be an integer, got {e.GetRawText()}", name);

    static float Float(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetDouble(out var d) && double.IsFinite(d) ? (float)d : throw OpenAiError.BadRequest($"'{name}' must be a number, got {e.GetRawText()}", name);

    static bool Bool(JsonElement e, string name) => e.ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => throw OpenAiError.BadRequest($"'{name}' must be true or false, got {e.GetRawText()}", name),
    };

    static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };
}
