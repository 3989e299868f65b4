using System.Text;
using System.Text.Json;

namespace Beagle.Tokenization;

/// <summary>The prompt formats a conversation can be rendered in.</summary>
public enum ChatTemplateKind
{
    /// <summary>
    /// Base models (e.g. the llama2.c story models): the message texts joined by newlines, roles left out, so the model
    /// simply continues the text. A "User: … Assistant:" frame is not used: a story model has never seen one and would
    /// continue the frame instead of the story.
    /// </summary>
    Plain,
    /// <summary>Llama-2 chat: <c>[INST] &lt;&lt;SYS&gt;&gt;…&lt;&lt;/SYS&gt;&gt; user [/INST] answer &lt;/s&gt;&lt;s&gt;[INST] …</c>.</summary>
    Llama2,
    /// <summary>Llama-3 instruct: <c>&lt;|start_header_id|&gt;role&lt;|end_header_id|&gt;\n\ntext&lt;|eot_id|&gt;</c>.</summary>
    Llama3,
    /// <summary>ChatML (Qwen and others): <c>&lt;|im_start|&gt;role\ntext&lt;|im_end|&gt;\n</c>.</summary>
    ChatML,
    /// <summary>Mistral instruct: <c>[INST] user [/INST] answer&lt;/s&gt;[INST] …</c>; a system text is put before the first user text.</summary>
    Mistral,
}

/// <summary>Who said a turn of a conversation.</summary>
public enum ChatTurnRole { System, User, Assistant }

/// <summary>One turn of a conversation, face-neutral (the chat client, the CLI and ML.NET all map to it).</summary>
public readonly record struct ChatTurn(ChatTurnRole Role, string Text);

/// <summary>A rendered prompt: the text to encode (BOS is added by the tokenizer, not written here) and extra stop strings.</summary>
public sealed record RenderedPrompt(string Text, IReadOnlyList<string> StopStrings);

/// <summary>
/// Renders conversations in the format a model was tuned on. The text never contains the BOS token: generation adds
/// it through <c>GenerationOptions.AddBos</c>, so every template composes with every tokenizer the same way.
/// </summary>
public static class ChatTemplates
{
    /// <summary>Renders <paramref name="turns"/> and opens the assistant's turn (the model writes the answer next).</summary>
    public static RenderedPrompt Render(ChatTemplateKind kind, IReadOnlyList<ChatTurn> turns)
    {
        ArgumentNullException.ThrowIfNull(turns);
        return kind switch
        {
            ChatTemplateKind.Plain => new(Plain(turns), []),
            ChatTemplateKind.Llama2 => new(Llama2(turns), []),
            ChatTemplateKind.Llama3 => new(Llama3(turns), ["<|eot_id|>"]),
            ChatTemplateKind.ChatML => new(ChatML(turns), ["<|im_end|>"]),
            ChatTemplateKind.Mistral => new(Mistral(turns), []),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "unknown chat template"),
        };
    }

    /// <summary>Parses a template name (case-insensitive): plain, llama2, llama3, chatml (alias qwen), mistral.</summary>
    public static ChatTemplateKind Parse(string name)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        return name.Trim().ToLowerInvariant().Replace("-", "").Replace("_", "") switch
        {
            "plain" or "none" or "base" => ChatTemplateKind.Plain,
            "llama2" => ChatTemplateKind.Llama2,
            "llama3" => ChatTemplateKind.Llama3,
            "chatml" or "qwen" or "qwen2" => ChatTemplateKind.ChatML,
            "mistral" => ChatTemplateKind.Mistral,
            _ => throw new ArgumentException($"unknown chat template '{name}' (use plain, llama2, llama3, chatml or mistral)", nameof(name)),
        };
    }

    /// <summary>
    /// Picks the template for a model path: a Hugging Face folder's <c>tokenizer_config.json</c> <c>chat_template</c> is
    /// recognised by its markers; a llama2.c checkpoint file, or a folder without a chat template, is a base model (plain).
    /// Returns the choice and the reason (for logging).
    /// </summary>
    public static (ChatTemplateKind Kind, string Reason) Detect(string modelPath)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelPath);
        if (!Directory.Exists(modelPath)) return (ChatTemplateKind.Plain, "a llama2.c checkpoint file is a base model");
        var configPath = Path.Combine(modelPath, "tokenizer_config.json");
        if (!File.Exists(configPath)) return (ChatTemplateKind.Plain, "the model folder has no tokenizer_config.json");
        string? template;
        using (var doc = JsonDocument.Parse(File.ReadAllText(configPath)))
            template = doc.RootElement.TryGetProperty("chat_template", out var t) ? ChatTemplateText(t) : null;
        if (template is null) return (ChatTemplateKind.Plain, "tokenizer_config.json has no chat_template (base model)");
        return DetectFromTemplate(template) is { } kind
            ? (kind, $"tokenizer_config.json chat_template has the {kind} markers")
            : (ChatTemplateKind.Plain, "tokenizer_config.json chat_template has no known markers; set ChatTemplate explicitly");
    }

    /// <summary>Recognises a Jinja chat template by its markers; null when none matches.</summary>
    public static ChatTemplateKind? DetectFromTemplate(string template)
    {
        if (template.Contains("<|start_header_id|>", StringComparison.Ordinal)) return ChatTemplateKind.Llama3;
        if (template.Contains("<|im_start|>", StringComparison.Ordinal)) return ChatTemplateKind.ChatML;
        if (template.Contains("<<SYS>>", StringComparison.Ordinal)) return ChatTemplateKind.Llama2;
        if (template.Contains("[INST]", StringComparison.Ordinal)) return ChatTemplateKind.Mistral;
        return null;
    }

    // chat_template is a string, or a list of {name, template} (the "default" one is used).
    static string? ChatTemplateText(JsonElement t) => t.ValueKind switch
    {
        JsonValueKind.String => t.GetString(),
        JsonValueKind.Array => t.EnumerateArray()
            .Where(e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("name", out var n) && n.GetString() == "default" && e.TryGetProperty("template", out _))
            .Select(e => e.GetProperty("template").GetString()).FirstOrDefault(),
        _ => null,
    };

    static string Plain(IReadOnlyList<ChatTurn> turns) =>
        string.Join("\n", turns.Select(t => t.Text).Where(s => !string.IsNullOrEmpty(s)));

    static (string? System, List<ChatTurn> Others) SplitSystem(IReadOnlyList<ChatTurn> turns)
    {
        var system = turns.Where(t => t.Role == ChatTurnRole.System).Select(t => t.Text).ToList();
        return (system.Count == 0 ? null : string.Join("\n", system), turns.Where(t => t.Role != ChatTurnRole.System).ToList());
    }

    static string Llama2(IReadOnlyList<ChatTurn> turns)
    {
        var (system, rest) = SplitSystem(turns);
        var sb = new StringBuilder();
        bool firstUser = true, open = false;
        foreach (var t in rest)
        {
            if (t.Role == ChatTurnRole.User)
            {
                if (!firstUser) sb.Append("<s>");
                sb.Append("[INST] ");
                if (firstUser && system is not null) sb.Append("<<SYS>>\n").Append(system).Append("\n<</SYS>>\n\n");
                sb.Append(t.Text.Trim()).Append(" [/INST]");
                firstUser = false; open = true;
            }
            else { sb.Append(' ').Append(t.Text.Trim()).Append(" </s>"); open = false; }
        }
        if (!open && firstUser && system is not null) sb.Append("[INST] <<SYS>>\n").Append(system).Append("\n<</SYS>>\n\n [/INST]");
        return sb.ToString();
    }

    static string Mistral(IReadOnlyList<ChatTurn> turns)
    {
        var (system, rest) = SplitSystem(turns);
        var sb = new StringBuilder();
        bool firstUser = true;
        foreach (var t in rest)
        {
            if (t.Role == ChatTurnRole.User)
            {
                sb.Append("[INST] ");
                if (firstUser && system is not null) sb.Append(system).Append("\n\n");
                sb.Append(t.Text.Trim()).Append(" [/INST]");
                firstUser = false;
            }
            else sb.Append(' ').Append(t.Text.Trim()).Append("</s>");
        }
        if (firstUser && system is not null) sb.Append("[INST] ").Append(system).Append(" [/INST]");
        return sb.ToString();
    }

    static string Llama3(IReadOnlyList<ChatTurn> turns)
    {
        var sb = new StringBuilder();
        foreach (var t in turns)
            sb.Append("<|start_header_id|>").Append(RoleName(t.Role)).Append("<|end_header_id|>\n\n").Append(t.Text.Trim()).Append("<|eot_id|>");
        return sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n").ToString();
    }

    static string ChatML(IReadOnlyList<ChatTurn> turns)
    {
        var sb = new StringBuilder();
        foreach (var t in turns)
            sb.Append("<|im_start|>").Append(RoleName(t.Role)).Append('\n').Append(t.Text).Append("<|im_end|>\n");
        return sb.Append("<|im_start|>assistant\n").ToString();
    }

    static string RoleName(ChatTurnRole r) => r switch
    {
        ChatTurnRole.System => "system",
        ChatTurnRole.User => "user",
        _ => "assistant",
    };
}
