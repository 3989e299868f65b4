using System.Text.Json;
using System.Text.Json.Serialization;
using Beagle.Decoding;
using Beagle.Runtime;

namespace Beagle.MLNet.Internal;

/// <summary>beagle/target.json in a saved model: which target the pipeline was fitted for.</summary>
internal sealed record TargetRecord(string Path, string? TokenizerPath, string Fingerprint);

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
        IReadOnlyDictionary<string, byte[]> draftFiles, string draftSource, string? expectedFingerprint = null, string? modelDescription = null)
    {
        var engine = new BeagleEngine(() =>
        {
            var target = TargetSource.Load(targetPath, tokenizerPath, settings.Device);
            try { return new EngineModels(target.Model, target.Tokenizer, draftFiles.Count == 0 ? null : LoadDraft(draftFiles, target.Model, draftSource)); }
            catch { target.Dispose(); throw; }
        }, new EngineOptions { Threads = settings.Threads });
        try
        {
            try { engine.Ready.GetAwaiter().GetResult(); }
            catch (Exception e) { throw new InvalidOperationException($"Beagle could not load the target '{targetPath}'{(draftFiles.Count > 0 ? " and its draft" : "")}: {e.Message}", e); }
            string fingerprint = engine.RunAsync((g, _) => TargetIdentity.Fingerprint(g.Target)).GetAwaiter().GetResult();
            if (expectedFingerprint is not null && fingerprint != expectedFingerprint)
                throw new InvalidDataException(
                    $"{modelDescription ?? "the Beagle model"} was fitted for a different target: it expects fingerprint {expectedFingerprint}, " +
                    $"but '{targetPath}' has {fingerprint}. Its draft and outputs only hold for the original target; load it with that target (BeagleLoadOptions.TargetPath).");
            return new BeagleRuntime(engine, new TargetRecord(Path.GetFullPath(targetPath), tokenizerPath is null ? null : Path.GetFullPath(tokenizerPath), fingerprint), settings, draftFiles);
        }
        catch { engine.Dispose(); throw; }
    }

    static Beagle.Drafting.IDraftModel LoadDraft(IReadOnlyDictionary<string, byte[]> files, Beagle.Models.LlamaModel target, string source)
    {
        // The draft loader reads a folder; materialise the embedded files for the duration of the load.
        string dir = Path.Combine(Path.GetTempPath(), "beagle-mlnet-draft-" + Guid.NewGuid().ToString("N")[..12]);
        try
        {
            WriteFiles(files, dir);
            return DraftStore.Load(dir, target);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // The loader names the temporary folder, which is gone by the time anyone reads the message: name where the
            // files come from instead. The original exception is not kept as the inner one, since it names that folder too.
            string message = e.Message.Replace(dir, source, StringComparison.Ordinal);
            throw new InvalidDataException(message.Contains(source, StringComparison.Ordinal) ? message : $"the draft in {source}: {message}");
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    /// <summary>Reads every file under <paramref name="dir"/> (relative paths with forward slashes).</summary>
    public static Dictionary<string, byte[]> ReadFiles(string dir) =>
        Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
            .ToDictionary(f => Path.GetRelativePath(dir, f).Replace('\\', '/'), File.ReadAllBytes, StringComparer.Ordinal);

    public static void WriteFiles(IReadOnlyDictionary<string, byte[]> files, string dir)
    {
        string root = Path.GetFullPath(dir) + Path.DirectorySeparatorChar;
        foreach (var (rel, bytes) in files)
        {
            var path = Path.GetFullPath(Path.Combine(root, rel));
            if (!path.StartsWith(root, StringComparison.Ordinal)) throw new InvalidDataException($"draft file path '{rel}' escapes its folder");
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllBytes(path, bytes);
        }
    }

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
