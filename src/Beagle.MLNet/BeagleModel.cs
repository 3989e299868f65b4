using System.IO.Compression;
using System.Text.Json;
using Beagle.MLNet.Internal;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Transforms;

namespace Beagle.MLNet;

/// <summary>Overrides for <see cref="BeagleModel.Load"/> (e.g. the target lives elsewhere on this machine).</summary>
public sealed class BeagleLoadOptions
{
    /// <summary>Target to load instead of the path recorded at save time. It must have the recorded fingerprint.</summary>
    public string? TargetPath { get; set; }
    public string? TokenizerPath { get; set; }
    public string? Device { get; set; }
}

/// <summary>
/// Saves and loads ML.NET pipelines that contain a Beagle transformer, with the draft weights inside the model zip.
///
/// Why this shape: ML.NET 5's public API can persist a custom transform only as a CustomMapping whose factory is
/// found by contract name and created with no arguments; it cannot store the mapping's state. So
/// <see cref="Save"/> writes the ordinary ML.NET zip with <c>mlContext.Model.Save</c> and then adds, with
/// System.IO.Compression, <c>beagle/target.json</c> (target path, tokenizer path, target fingerprint),
/// <c>beagle/settings.json</c> (prompt column, decoding settings) and <c>beagle/draft/*</c> (the draft checkpoint's
/// files). ML.NET ignores entries it does not know. <see cref="Load"/> reads those entries, loads the target and draft
/// on an engine thread, refuses a target with a different fingerprint, binds that runtime to the factory for the
/// duration of <c>mlContext.Model.Load</c>, and re-wraps the Beagle part of the loaded chain as a
/// <see cref="BeagleTransformer"/> (so it validates its input column and can be saved again). One zip is the whole model.
/// Limitation: one Beagle transformer per pipeline.
/// </summary>
public static class BeagleModel
{
    internal const string FormatName = "beagle-mlnet/1";
    const string TargetEntry = "beagle/target.json", SettingsEntry = "beagle/settings.json", DraftPrefix = "beagle/draft/";

    public static void Save(MLContext mlContext, ITransformer model, DataViewSchema inputSchema, string path)
    {
        ArgumentNullException.ThrowIfNull(mlContext); ArgumentNullException.ThrowIfNull(model); ArgumentException.ThrowIfNullOrEmpty(path);
        var found = new List<BeagleTransformer>();
        Collect(model, found);
        if (found.Count == 0) throw new ArgumentException("the pipeline contains no Beagle transformer; save it with mlContext.Model.Save", nameof(model));
        if (found.Count > 1) throw new NotSupportedException($"the pipeline contains {found.Count} Beagle transformers; BeagleModel saves one per pipeline");
        var rt = found[0].Runtime;

        mlContext.Model.Save(model, inputSchema, path);
        using var zip = ZipFile.Open(path, ZipArchiveMode.Update);
        Write(zip, TargetEntry, JsonSerializer.SerializeToUtf8Bytes(rt.Target, BeagleRuntime.Json));
        Write(zip, SettingsEntry, JsonSerializer.SerializeToUtf8Bytes(rt.Settings, BeagleRuntime.Json));
        foreach (var (rel, bytes) in rt.DraftFiles) Write(zip, DraftPrefix + rel, bytes);
    }

    public static ITransformer Load(MLContext mlContext, string path, out DataViewSchema inputSchema, BeagleLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(mlContext); ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"model not found: {path}", path);
        TargetRecord target; SettingsRecord settings; var draft = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        ZipArchive opened;
        try { opened = ZipFile.OpenRead(path); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{path}: not a zip file, so not an ML.NET model ({e.Message})", e); }
        using (var zip = opened)
        {
            CheckModelEntries(zip, path);
            target = ReadJson<TargetRecord>(zip, TargetEntry, path);
            settings = ReadJson<SettingsRecord>(zip, SettingsEntry, path);
            if (settings.Format != FormatName) throw new InvalidDataException($"{path}: Beagle model format '{settings.Format}' is not supported by this version (expects '{FormatName}')");
            foreach (var e in zip.Entries.Where(e => e.FullName.StartsWith(DraftPrefix, StringComparison.Ordinal) && e.Length > 0))
                draft[e.FullName[DraftPrefix.Length..]] = ReadAll(e);
        }
        if (settings.HasDraft && !settings.TrainingFreeDraft && draft.Count == 0) throw new InvalidDataException($"{path}: the model records a draft but the zip has no {DraftPrefix} entries");
        if (options?.Device is { } device) settings = settings with { Device = device };

        string targetPath = options?.TargetPath ?? target.Path;
        string? tokenizerPath = options?.TokenizerPath ?? (options?.TargetPath is null ? target.TokenizerPath : null);
        if (!File.Exists(targetPath) && !Directory.Exists(targetPath))
            throw new FileNotFoundException($"{path}: the target it was fitted for is not at '{targetPath}'; pass BeagleLoadOptions.TargetPath (fingerprint {target.Fingerprint})", targetPath);

        var runtime = BeagleRuntime.Start(targetPath, tokenizerPath, settings, draft, $"{path}:{DraftPrefix.TrimEnd('/')}", target.Fingerprint, $"the Beagle model '{path}'");
        try
        {
            mlContext.ComponentCatalog.RegisterAssembly(typeof(BeagleMappingFactory).Assembly);
            ITransformer loaded;
            using (BeagleMappingFactory.BindForLoad(runtime))
                try { loaded = mlContext.Model.Load(path, out inputSchema); }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    // ML.NET creates every saved component by reflection and rethrows a component's failure inside one
                    // TargetInvocationException per level (or, for its own format errors, as "Error during class
                    // instantiation"): bring the cause and the file to the top.
                    throw new InvalidDataException($"{path}: ML.NET could not load the pipeline in it: {e.GetBaseException().Message}", e);
                }
            int wrapped = 0;
            var result = Rewrap(loaded, runtime, ref wrapped);
            if (wrapped != 1) throw new InvalidDataException($"{path}: expected one Beagle transform in the saved pipeline, found {wrapped}");
            return result;
        }
        catch { runtime.Dispose(); throw; }
    }

    /// <summary>The first 8 bytes of every ML.NET model entry ("ML\0MODEL" read as a little-endian ulong: ML.NET's ModelHeader.SignatureValue), and the header's size.</summary>
    const ulong ModelSignature = 0x4C45444F4D004C4DUL;
    const int ModelHeaderSize = 256;

    /// <summary>
    /// Checks the header of each ML.NET component entry (<c>…/Model.key</c>) before ML.NET reads it. ML.NET's own check
    /// fails with "One of the identified items was in an invalid format." inside reflection exceptions, naming neither
    /// the file nor the entry; this names both. Damage past a valid header is still ML.NET's to report.
    /// </summary>
    static void CheckModelEntries(ZipArchive zip, string path)
    {
        Span<byte> head = stackalloc byte[8];
        foreach (var e in zip.Entries)
        {
            if (!(e.FullName == "Model.key" || e.FullName.EndsWith("/Model.key", StringComparison.Ordinal))) continue;
            using var s = e.Open();
            int n = s.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
            if (e.Length < ModelHeaderSize || n < head.Length || System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(head) != ModelSignature)
                throw new InvalidDataException($"{path}:{e.FullName}: a damaged ML.NET component ({e.Length} bytes, " +
                    (e.Length < ModelHeaderSize ? $"shorter than ML.NET's {ModelHeaderSize}-byte header" : "without ML.NET's model signature") + "); the zip is corrupt: save the model again");
        }
    }

    static void Collect(ITransformer t, List<BeagleTransformer> found)
    {
        if (t is BeagleTransformer b) found.Add(b);
        else if (t is IEnumerable<ITransformer> chain) foreach (var x in chain) Collect(x, found);
    }

    /// <summary>Replaces the saved inner chain (copy, Beagle CustomMapping, drop) by a BeagleTransformer around it.</summary>
    static ITransformer Rewrap(ITransformer t, BeagleRuntime runtime, ref int wrapped)
    {
        if (t is not IEnumerable<ITransformer> chain) return t;
        var items = chain.ToArray();
        if (items.Length == 3 && items[1] is CustomMappingTransformer<BeaglePromptRow, BeagleCompletionRow>)
        {
            wrapped++;
            return new BeagleTransformer(t, runtime);
        }
        bool changed = false;
        for (int i = 0; i < items.Length; i++)
        {
            var r = Rewrap(items[i], runtime, ref wrapped);
            changed |= !ReferenceEquals(r, items[i]);
            items[i] = r;
        }
        return changed ? new TransformerChain<ITransformer>(items) : t;
    }

    static void Write(ZipArchive zip, string name, byte[] bytes)
    {
        zip.GetEntry(name)?.Delete();
        using var s = zip.CreateEntry(name, CompressionLevel.Fastest).Open();
        s.Write(bytes);
    }

    static byte[] ReadAll(ZipArchiveEntry e)
    {
        using var s = e.Open(); using var m = new MemoryStream();
        s.CopyTo(m);
        return m.ToArray();
    }

    static T ReadJson<T>(ZipArchive zip, string entry, string path)
    {
        var e = zip.GetEntry(entry) ?? throw new InvalidDataException($"{path}: no {entry} in the zip; it is not a Beagle model, or it was saved with mlContext.Model.Save instead of BeagleModel.Save");
        try { return JsonSerializer.Deserialize<T>(ReadAll(e), BeagleRuntime.Json) ?? throw new InvalidDataException($"{path}: {entry} is empty"); }
        catch (JsonException x) { throw new InvalidDataException($"{path}: {entry} is not a valid Beagle record ({x.Message})", x); }
    }
}
