using System.Globalization;
using System.Text.Json;
using Beagle.Decoding;
using Beagle.Tokenization;
using Microsoft.Extensions.AI;

namespace Beagle.SemanticKernel;

/// <summary>
/// Maps M.E.AI requests to the engine's inputs. Pure functions over copies: the caller's messages, options and stop
/// list are never changed.
/// </summary>
internal static class ChatRequestMapper
{
    /// <summary>Keys read from <see cref="ChatOptions.AdditionalProperties"/> (same names as the SK settings).</summary>
    public const string SpeculativeKey = "speculative", TreeTokensKey = "tree_tokens", TreeDepthKey = "tree_depth", TreeTopKKey = "tree_topk", TreeMinProbKey = "tree_min_prob";
    /// <summary>The tree budget's settings by the names requests use, for error messages.</summary>
    public static readonly TreeBudgetSettingNames BudgetNames = new(TreeTokensKey, TreeDepthKey, TreeTopKKey, TreeMinProbKey);

    /// <summary>
    /// Refuses what the engine cannot honour rather than ignore it: tools (function calling), a JSON response format
    /// (constrained decoding) and repetition penalties (the output is the target's own distribution, token for token).
    /// The Semantic Kernel settings go through the same check (<see cref="BeaglePromptExecutionSettings.Validate"/>).
    /// </summary>
    public static void RefuseUnsupported(ChatOptions? options)
    {
        if (options?.Tools is { Count: > 0 })
            throw new NotSupportedException($"function calling is not supported by the Beagle chat client: ChatOptions.Tools has {options.Tools.Count} tool(s); remove the tools (or FunctionChoiceBehavior in Semantic Kernel)");
        if (options?.ResponseFormat is ChatResponseFormatJson)
            throw new NotSupportedException("structured (JSON) output is not supported by the Beagle chat client; leave ChatOptions.ResponseFormat (response_format) unset or text");
        if (options?.FrequencyPenalty is { } f && f != 0)
            throw new NotSupportedException("FrequencyPenalty (frequency_penalty) is not supported by the Beagle chat client: it decodes the target's own distribution; leave it unset or 0");
        if (options?.PresencePenalty is { } pp && pp != 0)
            throw new NotSupportedException("PresencePenalty (presence_penalty) is not supported by the Beagle chat client: it decodes the target's own distribution; leave it unset or 0");
    }

    /// <summary>Turns the conversation (with <see cref="ChatOptions.Instructions"/> as the first system turn) into template turns.</summary>
    public static List<ChatTurn> ToTurns(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        ArgumentNullException.ThrowIfNull(messages);
        RefuseUnsupported(options);
        var turns = new List<ChatTurn>();
        if (!string.IsNullOrEmpty(options?.Instructions)) turns.Add(new ChatTurn(ChatTurnRole.System, options.Instructions));
        foreach (var m in messages)
        {
            ArgumentNullException.ThrowIfNull(m, nameof(messages));
            foreach (var c in m.Contents)
                switch (c)
                {
                    case FunctionCallContent or FunctionResultContent:
                        throw new NotSupportedException($"function calling is not supported by the Beagle chat client: a {m.Role} message holds {c.GetType().Name}");
                    case DataContent or UriContent or HostedFileContent:
                        throw new NotSupportedException($"only text is supported by the Beagle chat client: a {m.Role} message holds {c.GetType().Name}");
                }
            ChatTurnRole role = m.Role == ChatRole.System ? ChatTurnRole.System
                : m.Role == ChatRole.User ? ChatTurnRole.User
                : m.Role == ChatRole.Assistant ? ChatTurnRole.Assistant
                : throw new NotSupportedException($"message role '{m.Role}' is not supported (system, user and assistant are; tool messages need function calling, which is not supported)");
            turns.Add(new ChatTurn(role, m.Text));
        }
        if (turns.Count == 0) throw new ArgumentException("the conversation is empty: give at least one message", nameof(messages));
        return turns;
    }

    /// <summary>
    /// Builds the generation options. <paramref name="contextLength"/> bounds MaxOutputTokens; <paramref name="hasDraft"/>
    /// decides whether speculation is on by default ("speculative": true without a draft is an error, not a silent no-op).
    /// </summary>
    public static GenerationOptions ToGeneration(ChatOptions? options, IReadOnlyList<string> templateStops, int defaultMaxTokens, int contextLength, bool hasDraft)
    {
        int max = options?.MaxOutputTokens ?? defaultMaxTokens;
        if (max < 1) throw new ArgumentOutOfRangeException(nameof(ChatOptions.MaxOutputTokens), max, "MaxOutputTokens (max_tokens) must be >= 1");
        if (max > contextLength)
            throw new ArgumentOutOfRangeException(nameof(ChatOptions.MaxOutputTokens), max, $"MaxOutputTokens (max_tokens) {max} is more than the model's context of {contextLength} tokens");

        float temperature = options?.Temperature ?? 0f;
        if (!(temperature >= 0) || float.IsInfinity(temperature)) throw new ArgumentOutOfRangeException(nameof(ChatOptions.Temperature), temperature, "Temperature must be a finite number >= 0 (0 = greedy)");
        float topP = options?.TopP ?? 1f;
        if (!(topP > 0 && topP <= 1)) throw new ArgumentOutOfRangeException(nameof(ChatOptions.TopP), topP, "TopP (top_p) must be in (0, 1]");
        int topK = options?.TopK ?? 0;
        if (topK < 0) throw new ArgumentOutOfRangeException(nameof(ChatOptions.TopK), topK, "TopK (top_k) must be >= 0 (0 = off)");
        int? seed = options?.Seed is { } s
            ? (s is >= int.MinValue and <= int.MaxValue ? (int)s : throw new ArgumentOutOfRangeException(nameof(ChatOptions.Seed), s, "Seed must fit in 32 bits"))
            : null;

        var stops = new List<string>(templateStops);
        if (options?.StopSequences is { } user)
            foreach (var stop in user)
            {
                if (string.IsNullOrEmpty(stop)) throw new ArgumentException("StopSequences must not contain empty strings", nameof(ChatOptions.StopSequences));
                if (!stops.Contains(stop)) stops.Add(stop);
            }

        var props = options?.AdditionalProperties;
        bool? speculative = GetBool(props, SpeculativeKey);
        if (speculative == true && !hasDraft)
            throw new InvalidOperationException("speculative decoding was requested (\"speculative\": true) but no draft is loaded; set BeagleModelOptions.DraftPath or leave \"speculative\" unset");
        var spec = new SpeculativeOptions
        {
            Tree = new TreeBudgetOptions
            {
                Tokens = GetInt(props, TreeTokensKey), Depth = GetInt(props, TreeDepthKey), TopK = GetInt(props, TreeTopKKey), MinProb = GetDouble(props, TreeMinProbKey),
            }.Validate(BudgetNames),
            Disabled = speculative == false,
        };

        return new GenerationOptions
        {
            MaxNewTokens = max,
            Sampling = new SamplingOptions { Temperature = temperature, TopK = topK, TopP = topP, Seed = seed },
            StopStrings = stops,
            AddBos = true,
            Speculative = hasDraft ? spec : null,
        }.Validate();
    }

    static bool? GetBool(AdditionalPropertiesDictionary? props, string key) => Get(props, key) switch
    {
        null => null,
        bool b => b,
        JsonElement { ValueKind: JsonValueKind.True } => true,
        JsonElement { ValueKind: JsonValueKind.False } => false,
        JsonElement { ValueKind: JsonValueKind.Null } => null,
        JsonElement { ValueKind: JsonValueKind.String } e => ParseBool(key, e.GetString()),
        string str => ParseBool(key, str),
        var other => throw new ArgumentException($"\"{key}\" must be true or false, got {other}", key),
    };

    static bool ParseBool(string key, string? s) => bool.TryParse(s, out var b) ? b : throw new ArgumentException($"\"{key}\" must be true or false, got '{s}'", key);

    static int? GetInt(AdditionalPropertiesDictionary? props, string key) => GetNumber(props, key, "an integer",
        e => e.GetInt32(), str => int.Parse(str, CultureInfo.InvariantCulture),
        c => checked(Convert.ToInt32(c, CultureInfo.InvariantCulture) is var i && Convert.ToDouble(c, CultureInfo.InvariantCulture) == i ? i : throw new FormatException()));

    static double? GetDouble(AdditionalPropertiesDictionary? props, string key) => GetNumber(props, key, "a number",
        e => e.GetDouble(), str => double.Parse(str, CultureInfo.InvariantCulture), c => Convert.ToDouble(c, CultureInfo.InvariantCulture));

    /// <summary>A number from a typed value, a JsonElement or a string; anything else is an ArgumentException naming the key.</summary>
    static T? GetNumber<T>(AdditionalPropertiesDictionary? props, string key, string kind,
        Func<JsonElement, T> fromJson, Func<string, T> parse, Func<IConvertible, T> convert) where T : struct
    {
        try
        {
            return Get(props, key) switch
            {
                null => null,
                JsonElement { ValueKind: JsonValueKind.Null } => null,
                JsonElement { ValueKind: JsonValueKind.Number } e => fromJson(e),
                JsonElement { ValueKind: JsonValueKind.String } e => parse(e.GetString()!),
                string str => parse(str),
                IConvertible c when c is not bool => convert(c),
                var other => throw new FormatException(other.ToString()),
            };
        }
        catch (Exception e) when (e is FormatException or OverflowException or InvalidOperationException)
        {
            throw new ArgumentException($"\"{key}\" must be {kind}, got {Get(props, key)}", key, e);
        }
    }

    static object? Get(AdditionalPropertiesDictionary? props, string key) => props is not null && props.TryGetValue(key, out var v) ? v : null;

    public static ChatFinishReason ToFinishReason(FinishReason r) => r switch
    {
        FinishReason.Length or FinishReason.ContextFull => ChatFinishReason.Length,
        _ => ChatFinishReason.Stop,
    };
}
