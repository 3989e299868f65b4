using System.Text.Json;
using Beagle.MLNet.Internal;
using Microsoft.ML;
using Microsoft.ML.Runtime;

namespace Beagle.MLNet;

/// <summary>
/// Estimator of a generation-only transformer: Fit loads the target (and an existing draft, if given) and returns a
/// <see cref="BeagleTransformer"/>; nothing is learned from the data, which only has to carry the prompt column.
/// </summary>
public sealed class BeagleGenerateEstimator : IEstimator<BeagleTransformer>
{
    readonly MLContext _ml;
    readonly BeagleGenerateOptions _options;

    internal BeagleGenerateEstimator(MLContext ml, BeagleGenerateOptions options)
    {
        _ml = ml; _options = options;
        options.Validate();
    }

    public BeagleTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        SchemaChecks.CheckPrompt(input.Schema, _options.InputColumnName);
        var draftPath = Beagle.Runtime.ModelLoader.Resolve(new Beagle.Runtime.ModelSpec
        {
            // A draft that needs no training replaces the bundled one (ModelLoader.Resolve's rule); it has no files to embed.
            Target = _options.TargetPath, Tokenizer = _options.TokenizerPath, Draft = _options.DraftPath, UseBundledDraft = _options.UseBundledDraft,
            DraftModel = _options.DraftModel, NGram = _options.NGram ? new Beagle.Drafting.NGram.NGramOptions() : null,
        }).Draft;
        var draft = draftPath is null ? new Dictionary<string, byte[]>() : BeagleRuntime.ReadFiles(draftPath);
        return BeaglePipeline.Build(_ml, input, _options, draft, draftPath ?? "", "generate");
    }

    public SchemaShape GetOutputSchema(SchemaShape inputSchema) => BeaglePipeline.OutputSchema(_ml, inputSchema, _options.InputColumnName);
}

/// <summary>
/// Estimator that trains a draft for the target on a text column with the core trainer (stage 1 then stage 2), writes
/// the run to <see cref="BeagleTrainDraftOptions.OutputDir"/> (the draft to its draft/ folder), and returns a <see cref="BeagleTransformer"/> that decodes
/// speculatively with it. Progress goes to <c>mlContext.Log</c> (source "Beagle"); cancel with
/// <see cref="BeagleTrainDraftOptions.CancellationToken"/>.
/// Note: in an estimator chain ML.NET transforms the training data after Fit, so there it must also carry the prompt
/// column (which may be the text column itself: set InputColumnName = TextColumnName).
/// </summary>
public sealed class BeagleTrainDraftEstimator : IEstimator<BeagleTransformer>
{
    readonly MLContext _ml;
    readonly BeagleTrainDraftOptions _options;

    internal BeagleTrainDraftEstimator(MLContext ml, BeagleTrainDraftOptions options)
    {
        _ml = ml; _options = options;
        options.Validate();
    }

    public BeagleTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var o = _options;
        SchemaChecks.CheckText(input.Schema, o.TextColumnName, "training-text");
        var ct = o.CancellationToken;
        var host = ((IHostEnvironment)_ml).Register("Beagle");
        using var ch = host.Start("TrainDraft");

        var texts = new List<string>();
        var textColumn = input.Schema[o.TextColumnName];
        using (var cursor = input.GetRowCursor([textColumn]))
        {
            var get = cursor.GetGetter<ReadOnlyMemory<char>>(textColumn);
            ReadOnlyMemory<char> v = default;
            while (cursor.MoveNext())
            {
                if ((texts.Count & 1023) == 0) ct.ThrowIfCancellationRequested();
                get(ref v);
                if (!v.IsEmpty) texts.Add(v.ToString());
            }
        }
        if (texts.Count == 0) throw new ArgumentException($"the training-text column '{o.TextColumnName}' has no non-empty rows", nameof(input));

        string outDir = o.OutputDir ?? Path.Combine(Path.GetTempPath(), "beagle-mlnet-train-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(outDir);
        // The trainer reads files: the column's rows become one JSON-lines file (one document per row, any text safe).
        string dataPath = Path.Combine(outDir, "texts.jsonl");
        File.WriteAllLines(dataPath, texts.Select(t => JsonSerializer.Serialize(new { text = t })));
        var training = o.ToTrainingOptions(outDir, dataPath);
        ch.Info(MessageSensitivity.None, "training a {0} draft for {1} on {2} texts ({3} epochs, {4} in stage 1) into {5}",
            training.Architecture, o.TargetPath, texts.Count, training.Epochs, training.EffectiveStage1Epochs, outDir);
        // The draft is trained on the transformer's own engine thread with the target it then decodes with: one target
        // load per Fit. Progress lines are relayed to this thread's channel while the engine loads.
        var trainer = new DraftTrainerAdapter(training, ct);
        var transformer = BeaglePipeline.Build(_ml, input, o, trainer.Train, "train-draft", checkPrompt: false,
            whileLoading: ready => trainer.Relay(ready, line => ch.Info(MessageSensitivity.None, "{0}", line)));
        var result = trainer.Result!;
        ch.Info(MessageSensitivity.None, "draft written to {0} ({1} steps, final loss {2:F4})", result.DraftDir, result.Steps, result.LastLoss);
        return transformer;
    }

    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        SchemaChecks.CheckText(inputSchema, _options.TextColumnName, "training-text");
        return BeaglePipeline.OutputSchema(_ml, inputSchema, _options.InputColumnName);
    }

}

/// <summary>Builds the inner chain shared by both estimators.</summary>
internal static class BeaglePipeline
{
    /// <summary>copy prompt → private column; Beagle CustomMapping; drop the private column.</summary>
    public static IEstimator<ITransformer> Inner(MLContext ml, string inputColumn, Action<BeaglePromptRow, BeagleCompletionRow> map) =>
        ml.Transforms.CopyColumns(BeagleColumns.InternalPrompt, inputColumn)
            .Append(ml.Transforms.CustomMapping(map, BeagleMappingFactory.ContractName))
            .Append(ml.Transforms.DropColumns(BeagleColumns.InternalPrompt));

    public static SchemaShape OutputSchema(MLContext ml, SchemaShape input, string inputColumn)
    {
        ArgumentNullException.ThrowIfNull(input);
        SchemaChecks.CheckText(input, inputColumn, "prompt");
        // Schema propagation only: the mapping is never run, so no model is loaded here.
        return Inner(ml, inputColumn, static (_, _) => { }).GetOutputSchema(input);
    }

    public static BeagleTransformer Build(MLContext ml, IDataView input, BeagleEstimatorOptions o, IReadOnlyDictionary<string, byte[]> draftFiles,
        string draftSource, string kind, bool checkPrompt = true)
    {
        var host = ((IHostEnvironment)ml).Register("Beagle");
        using (var ch = host.Start(kind))
            ch.Info(MessageSensitivity.None, "loading target {0} ({1})", o.TargetPath, draftFiles.Count > 0 ? "with draft" : "no draft: plain decoding");
        return Build(ml, input, o, _ => new DraftFiles(draftFiles, draftSource), kind, checkPrompt);
    }

    /// <summary>
    /// The transformer over a runtime whose draft comes from <paramref name="draftFor"/>, called on the engine thread
    /// with the loaded target (see <see cref="BeagleRuntime.Start(string, string?, SettingsRecord, Func{Beagle.Checkpoints.LoadedTarget, DraftFiles}, Action{Task}?, string?, string?)"/>).
    /// </summary>
    public static BeagleTransformer Build(MLContext ml, IDataView input, BeagleEstimatorOptions o, Func<Beagle.Checkpoints.LoadedTarget, DraftFiles> draftFor,
        string kind, bool checkPrompt = true, Action<Task>? whileLoading = null)
    {
        // HasDraft and DraftArchitecture are filled in once the draft's files are known.
        var settings = new SettingsRecord { InputColumnName = o.InputColumnName, Device = o.Device, Threads = o.Threads, Generation = o.ToGenerationSettings() };
        if (o is BeagleGenerateOptions { DraftModel: not null } or BeagleGenerateOptions { NGram: true })
        {
            // A draft that needs no training has no files to embed: the saved model names it.
            var g = (BeagleGenerateOptions)o;
            var model = g.DraftModel is null || Beagle.Runtime.DefaultModels.IsKnownName(g.DraftModel) ? g.DraftModel : Path.GetFullPath(g.DraftModel);
            settings = settings with { HasDraft = true, DraftArchitecture = g.NGram ? "ngram" : "draft-lm", DraftModel = model, NGram = g.NGram };
        }
        var runtime = BeagleRuntime.Start(o.TargetPath, o.TokenizerPath, settings, draftFor, whileLoading);
        try
        {
            var inner = Inner(ml, o.InputColumnName, runtime.Map);
            // Fitting the inner chain only binds schemas (nothing is learned); with a training set that lacks the
            // prompt column, bind it to a one-row empty prompt view instead.
            IDataView bindTo = checkPrompt || input.Schema.GetColumnOrNull(o.InputColumnName) is not null
                ? input
                : EmptyPrompts(ml, o.InputColumnName);
            return new BeagleTransformer(inner.Fit(bindTo), runtime);
        }
        catch { runtime.Dispose(); throw; }
    }

    static IDataView EmptyPrompts(MLContext ml, string column)
    {
        var view = ml.Data.LoadFromEnumerable(new[] { new BeaglePromptRow() });
        return ml.Transforms.CopyColumns(column, BeagleColumns.InternalPrompt).Fit(view).Transform(view);
    }
}
