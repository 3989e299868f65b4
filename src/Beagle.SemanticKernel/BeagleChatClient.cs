using System.Runtime.CompilerServices;
using Beagle.Decoding;
using Beagle.Runtime;
using Beagle.Tokenization;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Beagle.SemanticKernel;

/// <summary>
/// <see cref="IChatClient"/> over a <see cref="BeagleEngine"/>: renders the conversation with the model's chat template,
/// maps <see cref="ChatOptions"/> to <see cref="GenerationOptions"/> and streams the engine's UTF-8-safe chunks.
/// Adds <c>acceptance_length</c>, <c>tokens_per_second</c>, <c>speculative</c>, <c>draft_rounds</c>,
/// <c>accepted_draft_tokens</c> and <c>finish_reason</c> to the response's (and the final streaming update's)
/// AdditionalProperties, all from the engine's statistics of the generation: <c>speculative</c> says whether a draft
/// round ran, not whether the request allowed one. Function calling is not supported and is refused loudly.
/// The client does not own the engine: its <see cref="BeagleEngineProvider"/> (or the caller) does.
/// </summary>
public sealed class BeagleChatClient : IChatClient
{
    public const string AcceptanceLengthKey = "acceptance_length", TokensPerSecondKey = "tokens_per_second",
        SpeculativeKey = "speculative", DraftRoundsKey = "draft_rounds", AcceptedDraftTokensKey = "accepted_draft_tokens",
        FinishReasonKey = "finish_reason";

    readonly Func<CancellationToken, Task<BeagleEngine>> _engine;
    readonly ILogger _logger;
    readonly ChatClientMetadata _metadata;

    /// <summary>A client over the provider's engine (created and loaded on the first request).</summary>
    public BeagleChatClient(BeagleEngineProvider provider, ILogger<BeagleChatClient>? logger = null)
        : this(ct => (provider ?? throw new ArgumentNullException(nameof(provider))).GetReadyEngineAsync(ct), provider.ModelId, provider.ChatTemplate, provider.Options.DefaultMaxTokens, logger) { }

    /// <summary>A client over an engine the caller owns.</summary>
    public BeagleChatClient(BeagleEngine engine, string modelId, ChatTemplateKind template = ChatTemplateKind.Plain, int defaultMaxTokens = 256, ILogger<BeagleChatClient>? logger = null)
        : this(async ct => { await engine.Ready.WaitAsync(ct).ConfigureAwait(false); return engine; }, modelId, template, defaultMaxTokens, logger)
        => ArgumentNullException.ThrowIfNull(engine);

    BeagleChatClient(Func<CancellationToken, Task<BeagleEngine>> engine, string modelId, ChatTemplateKind template, int defaultMaxTokens, ILogger? logger)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(modelId);
        ArgumentOutOfRangeException.ThrowIfLessThan(defaultMaxTokens, 1);
        _engine = engine;
        ModelId = modelId;
        Template = template;
        DefaultMaxTokens = defaultMaxTokens;
        _logger = logger ?? NullLogger.Instance;
        _metadata = new ChatClientMetadata("beagle", null, modelId);
    }

    public string ModelId { get; }
    public ChatTemplateKind Template { get; }
    public int DefaultMaxTokens { get; }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in GetStreamingResponseAsync(messages, options, cancellationToken).ConfigureAwait(false)) updates.Add(u);
        var response = updates.ToChatResponse();
        // ToChatResponse merges text and usage but not the final update's statistics: carry them over.
        if (updates.Count > 0 && updates[^1].AdditionalProperties is { } stats) response.AdditionalProperties = new(stats);
        return response;
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        // Validate everything before touching the engine so that bad input fails at once, with no model loaded.
        var prompt = ChatTemplates.Render(Template, ChatRequestMapper.ToTurns(messages, options));
        var engine = await _engine(cancellationToken).ConfigureAwait(false);
        var gen = ChatRequestMapper.ToGeneration(options, prompt.StopStrings, DefaultMaxTokens, engine.TargetConfig.MaxSeqLen, engine.Draft is not null);

        string responseId = Guid.NewGuid().ToString("N"), messageId = Guid.NewGuid().ToString("N");
        var created = DateTimeOffset.UtcNow;
        var stats = new GenerationStats();
        bool completed = false;
        try
        {
            await foreach (var chunk in engine.GenerateAsync(prompt.Text, gen, stats, cancellationToken).ConfigureAwait(false))
            {
                // After cancellation keep draining: the worker stops within one round, then the stream ends with
                // OperationCanceledException, and the statistics recorded below are the worker's final ones.
                if (cancellationToken.IsCancellationRequested || chunk.Text.Length == 0) continue;
                yield return new ChatResponseUpdate(ChatRole.Assistant, chunk.Text)
                {
                    ResponseId = responseId, MessageId = messageId, ModelId = ModelId, CreatedAt = created,
                };
            }
            cancellationToken.ThrowIfCancellationRequested();
            completed = true;
        }
        finally
        {
            BeagleMetrics.Record(ModelId, stats, completed);
            _logger.LogDebug("Beagle {ModelId}: {Outcome} after {NewTokens} tokens (prompt {PromptTokens}, tau {Tau:F2}, {Tps:F1} tok/s)",
                ModelId, completed ? stats.FinishReason.ToString() : "stopped", stats.NewTokens, stats.PromptTokens, stats.AcceptanceLength, stats.TokensPerSecond);
        }

        var usage = new UsageDetails { InputTokenCount = stats.PromptTokens, OutputTokenCount = stats.NewTokens, TotalTokenCount = stats.PromptTokens + stats.NewTokens };
        yield return new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(usage)])
        {
            ResponseId = responseId, MessageId = messageId, ModelId = ModelId, CreatedAt = created,
            FinishReason = ChatRequestMapper.ToFinishReason(stats.FinishReason),
            AdditionalProperties = new AdditionalPropertiesDictionary
            {
                [AcceptanceLengthKey] = stats.AcceptanceLength,
                [TokensPerSecondKey] = stats.TokensPerSecond,
                // What ran, not what was asked: a request may allow speculation and still decode plainly (calibration
                // found drafting does not pay here, or no draft node cleared the confidence floor).
                [SpeculativeKey] = stats.Speculative,
                [DraftRoundsKey] = stats.DraftRounds,
                [AcceptedDraftTokensKey] = stats.AcceptedDraftTokens,
                [FinishReasonKey] = stats.FinishReason.ToString(),
            },
        };
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Nothing to release: the engine belongs to its provider or to the caller.</summary>
    public void Dispose() { }
}
