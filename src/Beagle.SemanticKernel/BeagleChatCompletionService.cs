using System.Runtime.CompilerServices;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using Microsoft.SemanticKernel.Services;

namespace Beagle.SemanticKernel;

/// <summary>
/// Semantic Kernel chat completion over a <see cref="BeagleChatClient"/> (a thin shim: the chat client does the work).
/// Settings are converted with <see cref="BeaglePromptExecutionSettings.FromExecutionSettings"/>; the response's
/// statistics (usage, acceptance_length, tokens_per_second) appear in the message Metadata (streaming: the last update).
/// </summary>
public sealed class BeagleChatCompletionService : IChatCompletionService
{
    readonly IChatClient _client;

    public BeagleChatCompletionService(IChatClient client)
    {
        _client = client ?? throw new ArgumentNullException(nameof(client));
        var modelId = client.GetService<ChatClientMetadata>()?.DefaultModelId;
        Attributes = new Dictionary<string, object?> { [AIServiceExtensions.ModelIdKey] = modelId };
    }

    public IReadOnlyDictionary<string, object?> Attributes { get; }

    public async Task<IReadOnlyList<ChatMessageContent>> GetChatMessageContentsAsync(ChatHistory chatHistory, PromptExecutionSettings? executionSettings = null,
        Kernel? kernel = null, CancellationToken cancellationToken = default)
    {
        var options = BeaglePromptExecutionSettings.FromExecutionSettings(executionSettings).ToChatOptions();
        var response = await _client.GetResponseAsync(ToMessages(chatHistory), options, cancellationToken).ConfigureAwait(false);
        return [new ChatMessageContent(AuthorRole.Assistant, response.Text, response.ModelId, response, metadata: Metadata(response.AdditionalProperties, response.Usage))];
    }

    public async IAsyncEnumerable<StreamingChatMessageContent> GetStreamingChatMessageContentsAsync(ChatHistory chatHistory, PromptExecutionSettings? executionSettings = null,
        Kernel? kernel = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var options = BeaglePromptExecutionSettings.FromExecutionSettings(executionSettings).ToChatOptions();
        await foreach (var u in _client.GetStreamingResponseAsync(ToMessages(chatHistory), options, cancellationToken).ConfigureAwait(false))
        {
            var usage = u.Contents.OfType<UsageContent>().FirstOrDefault()?.Details;
            yield return new StreamingChatMessageContent(AuthorRole.Assistant, u.Text, u, modelId: u.ModelId,
                metadata: u.AdditionalProperties is null && usage is null ? null : Metadata(u.AdditionalProperties, usage));
        }
    }

    static Dictionary<string, object?> Metadata(AdditionalPropertiesDictionary? props, UsageDetails? usage)
    {
        var d = new Dictionary<string, object?>();
        if (props is not null) foreach (var (k, v) in props) d[k] = v;
        if (usage is not null) d["Usage"] = usage;
        return d;
    }

    static List<ChatMessage> ToMessages(ChatHistory history)
    {
        ArgumentNullException.ThrowIfNull(history);
        var messages = new List<ChatMessage>(history.Count);
        foreach (var m in history)
        {
            foreach (var item in m.Items)
                if (item is Microsoft.SemanticKernel.FunctionCallContent or Microsoft.SemanticKernel.FunctionResultContent)
                    throw new NotSupportedException($"function calling is not supported by Beagle: the chat history holds {item.GetType().Name}");
            messages.Add(new ChatMessage(new ChatRole(m.Role.Label), m.Content));
        }
        return messages;
    }
}
