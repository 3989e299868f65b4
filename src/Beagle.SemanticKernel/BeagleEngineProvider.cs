using Beagle.Checkpoints;
using Beagle.Drafting;
using Beagle.Runtime;
using Beagle.Tokenization;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Beagle.SemanticKernel;

/// <summary>
/// One registration's engine: created on first use (never at registration), loaded on the engine's own thread, and
/// disposed with the provider (the DI container disposes it). Also fixes the chat template for the model.
/// </summary>
public sealed class BeagleEngineProvider : IAsyncDisposable, IDisposable
{
    readonly Lazy<BeagleEngine> _engine;
    readonly ILogger _logger;
    int _disposed;

    public BeagleEngineProvider(BeagleModelOptions options, ILoggerFactory? loggerFactory = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        Options = options.Clone().Validate();
        _logger = (ILogger?)loggerFactory?.CreateLogger<BeagleEngineProvider>() ?? NullLogger.Instance;
        (ChatTemplate, var reason) = Options.ChatTemplate is { } name
            ? (ChatTemplates.Parse(name), "set by the ChatTemplate option")
            : ChatTemplates.Detect(Options.TargetPath);
        _logger.LogInformation("Beagle model {ModelId}: chat template {Template} ({Reason})", ModelId, ChatTemplate, reason);
        _engine = new Lazy<BeagleEngine>(Create, LazyThreadSafetyMode.ExecutionAndPublication);
    }

    /// <summary>The validated copy of the options this provider serves.</summary>
    public BeagleModelOptions Options { get; }
    public string ModelId => Options.EffectiveModelId;
    public ChatTemplateKind ChatTemplate { get; }
    /// <summary>True once the engine was created (loading may still be running; see <see cref="BeagleEngine.Ready"/>).</summary>
    public bool IsCreated => _engine.IsValueCreated;

    /// <summary>The engine, created (and its loading started) on first access.</summary>
    public BeagleEngine Engine
    {
        get
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            return _engine.Value;
        }
    }

    /// <summary>The engine once its model is loaded; throws the loading error.</summary>
    public async Task<BeagleEngine> GetReadyEngineAsync(CancellationToken cancellationToken = default)
    {
        var engine = Engine;
        await engine.Ready.WaitAsync(cancellationToken).ConfigureAwait(false);
        return engine;
    }

    BeagleEngine Create()
    {
        _logger.LogInformation("Beagle model {ModelId}: loading {Target} on device {Device}", ModelId, Options.TargetPath, Options.Device);
        var engine = new BeagleEngine(() => Load(Options), new EngineOptions
        {
            QueueCapacity = Options.QueueCapacity, Threads = Options.Threads, CalibrateTreeBudget = Options.CalibrateTreeBudget,
            StreamIdleTimeout = Options.StreamIdleTimeout, MaxBatchSize = Options.MaxBatchSize, Workers = Options.Workers,
        });
        BeagleMetrics.Track(engine, ModelId);
        engine.Ready.ContinueWith(t =>
        {
            if (t.IsFaulted) _logger.LogError(t.Exception!.InnerException, "Beagle model {ModelId}: loading failed", ModelId);
            else _logger.LogInformation("Beagle model {ModelId}: loaded (draft: {Draft})", ModelId, engine.Draft?.Architecture ?? "none");
        }, TaskScheduler.Default);
        return engine;
    }

    /// <summary>
    /// Loads target, tokenizer and draft. Runs on the engine thread. The target is a llama2.c file or a Hugging Face
    /// folder (<see cref="ModelLoader"/>); the draft must have been trained for exactly this target (its fingerprint is
    /// checked on load). With a draft, requests decode speculatively unless they set
    /// "speculative": false.
    /// </summary>
    internal static EngineModels Load(BeagleModelOptions o)
    {
        // The composition root resolves a known model (the bundled stories5M, or stories260K from the cache) into its
        // files and its bundled draft; this face only names the setting at fault in the loader's messages.
        var spec = o.ToModelSpec();
        var files = ModelLoader.Resolve(spec);
        LoadedTarget target;
        try { target = ModelLoader.LoadTarget(spec, files); }
        catch (FileNotFoundException e) { throw new FileNotFoundException($"{Setting(o, e.FileName)}: {e.Message}", e.FileName, e); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{Setting(o, null)}: {e.Message}", e); }
        try
        {
            IDraftModel? draft;
            try { draft = ModelLoader.LoadDraft(spec, files, target); }
            catch (InvalidDataException e) when (files.Draft is not null) { throw new InvalidDataException($"{nameof(BeagleModelOptions.DraftPath)} '{files.Draft}': {e.Message}", e); }
            catch (ArgumentException e) when (files.Draft is null) { throw new ArgumentException($"{nameof(BeagleModelOptions.DraftModel)} '{o.DraftModel}': {e.Message}", e); }
            return new EngineModels(target.Model, target.Tokenizer, draft);
        }
        catch { target.Dispose(); throw; }
    }

    static string Setting(BeagleModelOptions o, string? file) =>
        o.TokenizerPath is not null && file is not null && Path.GetFullPath(file) == Path.GetFullPath(o.TokenizerPath)
            ? $"{nameof(BeagleModelOptions.TokenizerPath)} '{o.TokenizerPath}'"
            : $"{nameof(BeagleModelOptions.TargetPath)} '{o.TargetPath}'";

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_engine.IsValueCreated)
        {
            BeagleMetrics.Untrack(_engine.Value);
            await _engine.Value.DisposeAsync().ConfigureAwait(false);
        }
    }

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();
}
