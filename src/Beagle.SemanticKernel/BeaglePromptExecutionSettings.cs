using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;

namespace Beagle.SemanticKernel;

/// <summary>
/// Semantic Kernel settings for Beagle. The JSON names (snake_case) are the ones prompt configs and
/// <see cref="PromptExecutionSettings.ExtensionData"/> use; the same names reach an IChatClient through SK's
/// <c>AsChatCompletionService</c> bridge (as ChatOptions properties or AdditionalProperties).
/// </summary>
public sealed class BeaglePromptExecutionSettings : PromptExecutionSettings
{
    int? _maxTokens; float? _temperature, _topP; int? _topK; long? _seed; IList<string>? _stop;
    bool? _speculative; int? _treeTokens, _treeDepth, _treeTopK; double? _treeMinProb;

    /// <summary>Output token limit; null = BeagleModelOptions.DefaultMaxTokens.</summary>
    [JsonPropertyName("max_tokens")] public int? MaxTokens { get => _maxTokens; set { ThrowIfFrozen(); _maxTokens = value; } }
    /// <summary>0 or null = greedy.</summary>
    [JsonPropertyName("temperature")] public float? Temperature { get => _temperature; set { ThrowIfFrozen(); _temperature = value; } }
    [JsonPropertyName("top_p")] public float? TopP { get => _topP; set { ThrowIfFrozen(); _topP = value; } }
    [JsonPropertyName("top_k")] public int? TopK { get => _topK; set { ThrowIfFrozen(); _topK = value; } }
    [JsonPropertyName("seed")] public long? Seed { get => _seed; set { ThrowIfFrozen(); _seed = value; } }
    [JsonPropertyName("stop_sequences")] public IList<string>? StopSequences { get => _stop; set { ThrowIfFrozen(); _stop = value; } }
    /// <summary>null = speculate when a draft is loaded; false = plain decoding; true = require a draft.</summary>
    [JsonPropertyName("speculative")] public bool? Speculative { get => _speculative; set { ThrowIfFrozen(); _speculative = value; } }
    [JsonPropertyName("tree_tokens")] public int? TreeTokens { get => _treeTokens; set { ThrowIfFrozen(); _treeTokens = value; } }
    [JsonPropertyName("tree_depth")] public int? TreeDepth { get => _treeDepth; set { ThrowIfFrozen(); _treeDepth = value; } }
    [JsonPropertyName("tree_topk")] public int? TreeTopK { get => _treeTopK; set { ThrowIfFrozen(); _treeTopK = value; } }
    /// <summary>Confidence floor in [0, 1) for draft nodes (0 = off; null = the measured or default budget's).</summary>
    [JsonPropertyName("tree_min_prob")] public double? TreeMinProb { get => _treeMinProb; set { ThrowIfFrozen(); _treeMinProb = value; } }
    /// <summary>The tree_* settings as one budget (what they name overrides the served model's budget).</summary>
    [JsonIgnore] public Beagle.Decoding.TreeBudgetOptions TreeBudget => new() { Tokens = TreeTokens, Depth = TreeDepth, TopK = TreeTopK, MinProb = TreeMinProb };

    /// <summary>
    /// Converts any settings to Beagle settings: null gives defaults, Beagle settings are returned as they are, other
    /// settings go through a JSON round trip (so ExtensionData keys like "max_tokens" land on the typed properties).
    /// The result is validated.
    /// </summary>
    public static BeaglePromptExecutionSettings FromExecutionSettings(PromptExecutionSettings? settings)
    {
        BeaglePromptExecutionSettings result;
        if (settings is null) result = new();
        else if (settings is BeaglePromptExecutionSettings b) result = b;
        else
        {
            try { result = JsonSerializer.Deserialize<BeaglePromptExecutionSettings>(JsonSerializer.Serialize(settings))!; }
            catch (JsonException e) { throw new ArgumentException($"invalid Beagle execution settings: {e.Message}", nameof(settings), e); }
            result.ServiceId ??= settings.ServiceId;
            result.ModelId ??= settings.ModelId;
            result.FunctionChoiceBehavior ??= settings.FunctionChoiceBehavior;
        }
        return result.Validate();
    }

    /// <summary>Throws an ArgumentException (naming the setting) for out-of-range values.</summary>
    public BeaglePromptExecutionSettings Validate()
    {
        if (MaxTokens is { } m && m < 1) throw new ArgumentOutOfRangeException("max_tokens", m, "max_tokens must be >= 1");
        if (Temperature is { } t && (!(t >= 0) || float.IsInfinity(t))) throw new ArgumentOutOfRangeException("temperature", t, "temperature must be a finite number >= 0 (0 = greedy)");
        if (TopP is { } p && !(p > 0 && p <= 1)) throw new ArgumentOutOfRangeException("top_p", p, "top_p must be in (0, 1]");
        if (TopK is { } k && k < 0) throw new ArgumentOutOfRangeException("top_k", k, "top_k must be >= 0 (0 = off)");
        if (Seed is { } s && (s < int.MinValue || s > int.MaxValue)) throw new ArgumentOutOfRangeException("seed", s, "seed must fit in 32 bits");
        if (StopSequences?.Any(string.IsNullOrEmpty) == true) throw new ArgumentException("stop_sequences must not contain empty strings", "stop_sequences");
        TreeBudget.Validate(ChatRequestMapper.BudgetNames);
        if (FunctionChoiceBehavior is not null)
            throw new NotSupportedException("function calling is not supported by Beagle: remove FunctionChoiceBehavior from the execution settings");
        // Settings of other connectors that arrive in ExtensionData (response_format, penalties, tools) are refused
        // exactly as the chat client refuses their ChatOptions counterparts, not passed on and ignored.
        ChatRequestMapper.RefuseUnsupported(ToChatOptions());
        return this;
    }

    /// <summary>ExtensionData keys with a ChatOptions counterpart that the chat client checks (see <see cref="ToChatOptions"/>).</summary>
    static readonly string[] MappedKeys = ["response_format", "frequency_penalty", "presence_penalty"];

    /// <summary>A response_format value as M.E.AI's: "text" or unset is text; "json_object", "json_schema", a schema object or a type is JSON.</summary>
    static ChatResponseFormat? ResponseFormat(object? value) => value switch
    {
        null => null,
        ChatResponseFormat f => f,
        string str => str is "" or "text" ? ChatResponseFormat.Text : ChatResponseFormat.Json,
        JsonElement { ValueKind: JsonValueKind.Null } => null,
        JsonElement { ValueKind: JsonValueKind.String } e => ResponseFormat(e.GetString()),
        JsonElement { ValueKind: JsonValueKind.Object } e when e.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String => ResponseFormat(type.GetString()),
        _ => ChatResponseFormat.Json,
    };

    static float? Penalty(object? value, string key) => value switch
    {
        null => null,
        JsonElement { ValueKind: JsonValueKind.Null } => null,
        JsonElement { ValueKind: JsonValueKind.Number } e => e.GetSingle(),
        IConvertible c => Convert.ToSingle(c, System.Globalization.CultureInfo.InvariantCulture),
        _ => throw new ArgumentException($"{key} must be a number, got {value}", key),
    };

    /// <summary>The ChatOptions these settings mean (new lists; nothing of this instance is shared).</summary>
    public ChatOptions ToChatOptions()
    {
        var o = new ChatOptions
        {
            ModelId = ModelId, MaxOutputTokens = MaxTokens, Temperature = Temperature, TopP = TopP, TopK = TopK, Seed = Seed,
            StopSequences = StopSequences is null ? null : new List<string>(StopSequences),
        };
        var props = new AdditionalPropertiesDictionary();
        if (ExtensionData is not null)
        {
            foreach (var (k, v) in ExtensionData) if (!MappedKeys.Contains(k)) props[k] = v;
            object? Ext(string key) => ExtensionData.TryGetValue(key, out var v) ? v : null;
            if (Ext("tools") is { } tools && !(tools is JsonElement { ValueKind: JsonValueKind.Null } || tools is JsonElement { ValueKind: JsonValueKind.Array } t && t.GetArrayLength() == 0))
                throw new NotSupportedException("function calling is not supported by Beagle: remove tools from the execution settings");
            o.ResponseFormat = ResponseFormat(Ext("response_format"));
            o.FrequencyPenalty = Penalty(Ext("frequency_penalty"), "frequency_penalty");
            o.PresencePenalty = Penalty(Ext("presence_penalty"), "presence_penalty");
        }
        if (Speculative is { } spec) props[ChatRequestMapper.SpeculativeKey] = spec;
        if (TreeTokens is { } tt) props[ChatRequestMapper.TreeTokensKey] = tt;
        if (TreeDepth is { } td) props[ChatRequestMapper.TreeDepthKey] = td;
        if (TreeTopK is { } tk) props[ChatRequestMapper.TreeTopKKey] = tk;
        if (TreeMinProb is { } mp) props[ChatRequestMapper.TreeMinProbKey] = mp;
        if (props.Count > 0) o.AdditionalProperties = props;
        return o;
    }

    public override PromptExecutionSettings Clone() => new BeaglePromptExecutionSettings
    {
        ServiceId = ServiceId, ModelId = ModelId, FunctionChoiceBehavior = FunctionChoiceBehavior,
        ExtensionData = ExtensionData is null ? null : new Dictionary<string, object>(ExtensionData),
        MaxTokens = MaxTokens, Temperature = Temperature, TopP = TopP, TopK = TopK, Seed = Seed,
        StopSequences = StopSequences is null ? null : new List<string>(StopSequences),
        Speculative = Speculative, TreeTokens = TreeTokens, TreeDepth = TreeDepth, TreeTopK = TreeTopK, TreeMinProb = TreeMinProb,
    };
}
