using System.Text.Json;
using System.Text.Json.Serialization;
using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Runtime;

namespace Beagle.MLNet.Internal;

/// <summary>beagle/target.json in a saved model: which target the pipeline was fitted for.</summary>
internal sealed record TargetRecord(string Path, string? TokenizerPath, string Fingerprint);

/// <summary>A draft checkpoint's files by relative path (empty: no draft) and where they come from, for messages.</summary>
internal sealed record DraftFiles(IReadOnlyDictionary<string, byte[]> Files, string Source);

/// <summary>beagle/settings.json in a saved model: everything else needed to decode as the fitted pipeline did.</summary>
internal sealed record SettingsRecord
{
    public string Format { get; init; } = BeagleModel.FormatName;
    public required string InputColumnName { get; init; }
    public string Device { get; init; } = "cpu";
    public int Threads { get; init; } = 1;
    public required GenerationSettings Generation { get; init; }
    /// <summary>Null when there is no draft (plain decoding).</summary>
    public string? DraftArchitecture { get; init; }
    public bool HasDraft { get; init; }
    /// <summary>A draft language model's path or known name (draft-lm; no files embedded), or null.</summary>
    public string? DraftModel { get; init; }
    /// <summary>Prompt lookup drafts (no files).</summary>
    public bool NGram { get; init; }
    /// <summary>Whether the draft is one that needs no embedded files.</summary>
    [JsonIgnore] public bool TrainingFreeDraft => DraftModel is not null || NGram;
}

/// <summary>
/// The state behind one Beagle transformer: a <see cref="BeagleEngine"/> (one worker thread owning the TorchSharp
/// model and draft), the decoding settings and the draft's files (kept in memory so that a saved model can embed them
/// whether it was fitted or reloaded). <see cref="Map"/> is the CustomMapping action: ML.NET may call it from any
/// thread; the generation itself always runs on the engine thread.
/// </summary>
internal sealed class BeagleRuntime : IDisposable
{
    internal static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull };

    readonly BeagleEngine _engine;
    readonly GenerationOptions _options;

    public TargetRecord Target { get; }
    public SettingsRecord Settings { get; }
    /// <summary>Draft checkpoint files by relative path (forward slashes); empty when there is no draft.</summary>
    public IReadOnlyDictionary<string, byte[]> DraftFiles { get; }

    BeagleRuntime(BeagleEngine engine, TargetRecord target, SettingsRecord settings, IReadOnlyDictionary<string, byte[]> draftFiles)
    {
        _engine = engine; Target = target; Settings = settings; DraftFiles = draftFiles;
        _options = settings.Generation.ToGenerationOptions(settings.HasDraft);
    }

    /// <summary>
    /// Loads the target (and draft) on a new engine thread and fingerprints the target. With
    /// <paramref name="expectedFingerprint"/> set, a different target is refused (InvalidDataException).
    /// </summary>
    /// <param name="draftSource">Where the draft files come from (a folder, or "model.zip:beagle/draft"), for error messages.</param>
    public static BeagleRuntime Start(string targetPath, string? tokenizerPath, SettingsRecord settings,
        IReadOnlyDictionary<string, byte[]> draftFiles, string draftSource, string? expectedFingerprint = null, string? modelDescription = null) =>
        Start(targetPath, tokenizerPath, settings, _ => new DraftFiles(draftFiles, draftSource), null, expectedFingerprint, modelDescription);

    /// <summary>
    /// Loads the target on a new engine thread, then asks <paramref name="draftFor"/> for the draft's files on that
    /// thread with the loaded target (fitting TrainDraft trains the draft there: the target is loaded once per Fit),
    /// and loads the draft. <paramref name="whileLoading"/> runs on the calling thread until the engine is ready (it is
    /// handed the readiness task), e.g. to relay training progress to ML.NET's channel, which belongs to this thread.
    /// Errors of <paramref name="draftFor"/> are thrown as they are (cancellation included).
    /// </summary>
    public static BeagleRuntime Start(string targetPath, string? tokenizerPath, SettingsRecord settings, Func<LoadedTarget, DraftFiles> draftFor,
        Action<Task>? whileLoading, string? expectedFingerprint = null, string? modelDescription = null)
    {
        DraftFiles? draft = null;
        Exception? draftError = null;
        var engine = new BeagleEngine(() =>
        {
            var target = TargetSource.Load(targetPath, tokenizerPath, settings.Device);
            try
            {
                try { draft = draftFor(target); }
                catch (Exception e) { draftError = e; throw; }
                var model = settings.TrainingFreeDraft ? Beagle.Drafting.TrainingFreeDrafts.Create(settings.DraftModel, settings.NGram, target.Model, target.Tokenizer)
                    : draft.Files.Count == 0 ? null : LoadDraft(draft.Files, target.Model, draft.Source);
                return new EngineModels(target.Model, target.Tokenizer, model);
            }
            catch { target.Dispose(); throw; }
        }, new EngineOptions { Threads = settings.Threads });
        try
        {
            whileLoading?.Invoke(engine.Ready);
            try { engine.Ready.GetAwaiter().GetResult(); }
            catch (Exception) when (draftError is not null) { System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(draftError).Throw(); throw; }
            catch (Exception e) { throw new InvalidOperationException($"Beagle could not load the target '{targetPath}'{(draft is { Files.Count: > 0 } ? " and its draft" : "")}: {e.Message}", e); }
            string fingerprint = engine.RunAsync((g, _) => TargetIdentity.Fingerprint(g.Target)).GetAwaiter().GetResult();
            if (expectedFingerprint is not null && fingerprint != expectedFingerprint)
                throw new InvalidDataException(
                    $"{modelDescription ?? "the Beagle model"} was fitted for a different target: it expects fingerprint {expectedFingerprint}, " +
                    $"but '{targetPath}' has {fingerprint}. Its draft and outputs only hold for the original target; load it with that target (BeagleLoadOptions.TargetPath).");
            var files = draft!.Files;
            if (!settings.TrainingFreeDraft)   // a training-free draft has no files: its settings already name it
                settings = settings with { HasDraft = files.Count > 0, DraftArchitecture = files.Count > 0 ? DraftStore.Architecture(files) : null };
            return new BeagleRuntime(engine, new TargetRecord(Path.GetFullPath(targetPath), tokenizerPath is null ? null : Path.GetFullPath(tokenizerPath), fingerprint), settings, files);
        }
        catch { engine.Dispose(); throw; }
    }

    static Beagle.Drafting.IDraftModel LoadDraft(IReadOnlyDictionary<string, byte[]> files, Beagle.Models.LlamaModel target, string source)
    {
        try { return DraftStore.Load(files, target, source); }
        catch (InvalidDataException e) when (!e.Message.Contains(source, StringComparison.Ordinal))
        {
            throw new InvalidDataException($"the draft in {source}: {e.Message}", e);
        }
    }

    /// <summary>Reads every file under <paramref name="dir"/> (relative paths with forward slashes).</summary>
    public static Dictionary<string, byte[]> ReadFiles(string dir) =>
        Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
            .ToDictionary(f => Path.GetRelativePath(dir, f).Replace('\\', '/'), File.ReadAllBytes, StringComparer.Ordinal);

    /// <summary>
    /// The CustomMapping action: one completion per row, generated by the engine (in its running batch). A row the
    /// engine refuses (its prompt is longer than the context, ...: an ArgumentException) gets its reason in the Error
    /// column and no completion; the other rows go on. Thrown from here, it would end the whole enumeration, wrapped by ML.NET's
    /// cursors, with the row unnamed. Failures of the engine itself (disposed, out of memory) still throw.
    /// </summary>
    public void Map(BeaglePromptRow input, BeagleCompletionRow output)
    {
        string prompt = input.Prompt ?? "";
        try
        {
            // Through the engine's batch like any other request: rows mapped concurrently (or alongside chat requests on
            // the same engine) share its rounds.
            var r = _engine.CompleteAsync(prompt, _options).GetAwaiter().GetResult();
            output.Completion = r.Text;
            output.NewTokens = r.Stats.NewTokens;
            output.AcceptanceLength = (float)r.Stats.AcceptanceLength;
            output.TokensPerSecond = (float)r.Stats.TokensPerSecond;
            output.Speculative = r.Stats.Speculative;
            output.DraftRounds = r.Stats.DraftRounds;
            output.AcceptedDraftTokens = (int)r.Stats.AcceptedDraftTokens;
            output.Error = "";
        }
        catch (ArgumentException e)
        {
            output.Completion = "";
            output.NewTokens = 0;
            output.AcceptanceLength = 0;
            output.TokensPerSecond = 0;
            output.Speculative = false;
            output.DraftRounds = 0;
            output.AcceptedDraftTokens = 0;
            // The sentence for a user, without .NET's " (Parameter 'promptIds')" suffix.
            output.Error = e.ParamName is { Length: > 0 } name && e.Message.IndexOf($" (Parameter '{name}')", StringComparison.Ordinal) is var i and > 0
                ? e.Message[..i] : e.Message;
        }
    }

    public void Dispose() => _engine.Dispose();
}
