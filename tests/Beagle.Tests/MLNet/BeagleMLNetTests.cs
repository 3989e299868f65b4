using System.IO.Compression;
using Beagle.Decoding;
using Beagle.MLNet;
using Beagle.Tests.Infrastructure;
using Microsoft.ML;
using Microsoft.ML.Data;
using Xunit;

namespace Beagle.Tests.MLNet;

public sealed class PromptInput
{
    public string Prompt { get; set; } = "";
}

public sealed class RawInput
{
    public string Raw { get; set; } = "";
}

public sealed class CompletionRow
{
    public string Prompt { get; set; } = "";
    public string Completion { get; set; } = "";
    public int NewTokens { get; set; }
    public float AcceptanceLength { get; set; }
    public float TokensPerSecond { get; set; }
    public bool Speculative { get; set; }
    public int DraftRounds { get; set; }
    public int AcceptedDraftTokens { get; set; }
    public string Error { get; set; } = "";
}

/// <summary>
/// The ML.NET face against the core engine: every completion is compared with <see cref="Generator.Complete"/> on the
/// same target (a second, independent code path), and a reloaded model with the fitted one.
/// </summary>
public class BeagleMLNetTests
{
    const int MaxTokens = 32;
    static readonly string[] Prompts = ["Once upon a time", "Lily and Tom went to the park", "The little dog"];

    static BeagleGenerateOptions Options(string column = "Prompt") => new()
    {
        TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, InputColumnName = column, MaxNewTokens = MaxTokens,
    };

    static IDataView PromptView(MLContext ml, params string[] prompts) =>
        ml.Data.LoadFromEnumerable(prompts.Select(p => new PromptInput { Prompt = p }).ToArray());

    static string[] Reference(params string[] prompts)
    {
        var g = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer);
        return prompts.Select(p => g.Complete(p, new GenerationOptions { MaxNewTokens = MaxTokens }).Text).ToArray();
    }

    static CompletionRow[] Rows(MLContext ml, IDataView view) => ml.Data.CreateEnumerable<CompletionRow>(view, reuseRowObject: false).ToArray();

    [Fact]
    public void Output_schema_keeps_the_input_columns_and_adds_the_typed_outputs_without_loading_the_model()
    {
        var ml = new MLContext(seed: 1);
        var data = PromptView(ml, "x");
        var shape = ml.Beagle().Generate(Options()).GetOutputSchema(Shape(data.Schema));

        Assert.Equal(["Prompt", "Completion", "NewTokens", "AcceptanceLength", "TokensPerSecond", "Speculative", "DraftRounds", "AcceptedDraftTokens", "Error"],
            shape.Select(c => c.Name).ToArray());
        Assert.Equal(BooleanDataViewType.Instance, shape.Single(c => c.Name == "Speculative").ItemType);
        Assert.Equal(NumberDataViewType.Int32, shape.Single(c => c.Name == "DraftRounds").ItemType);
        Assert.IsType<TextDataViewType>(shape.Single(c => c.Name == "Error").ItemType);
        Assert.IsType<TextDataViewType>(shape.Single(c => c.Name == "Completion").ItemType);
        Assert.Equal(NumberDataViewType.Int32, shape.Single(c => c.Name == "NewTokens").ItemType);
        Assert.Equal(NumberDataViewType.Single, shape.Single(c => c.Name == "AcceptanceLength").ItemType);
        Assert.Equal(NumberDataViewType.Single, shape.Single(c => c.Name == "TokensPerSecond").ItemType);
    }

    [Fact]
    public void A_missing_prompt_column_is_refused_naming_it_at_schema_and_fit_time()
    {
        var ml = new MLContext(seed: 1);
        var data = PromptView(ml, "x");
        var est = ml.Beagle().Generate(Options("Question"));

        var e1 = Assert.Throws<ArgumentException>(() => est.GetOutputSchema(Shape(data.Schema)));
        Assert.Contains("'Question'", e1.Message);
        var e2 = Assert.Throws<ArgumentException>(() => est.Fit(data));
        Assert.Contains("'Question'", e2.Message);
    }

    [Fact]
    public void A_prompt_column_that_is_not_text_is_refused_naming_it()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new { Prompt = 1f } });
        var est = ml.Beagle().Generate(Options());

        var e = Assert.Throws<ArgumentException>(() => est.GetOutputSchema(Shape(data.Schema)));
        Assert.Contains("'Prompt'", e.Message);
        Assert.Contains("text", e.Message);
        Assert.Throws<ArgumentException>(() => est.Fit(data));
    }

    [Fact]
    public void Transform_gives_the_core_engines_greedy_completion_for_every_row_with_plain_decoding_statistics()
    {
        var ml = new MLContext(seed: 1);
        var data = PromptView(ml, Prompts);
        using var model = ml.Beagle().Generate(Options()).Fit(data);
        Assert.False(model.HasDraft);

        var rows = Rows(ml, model.Transform(data));

        Assert.Equal(Reference(Prompts), rows.Select(r => r.Completion).ToArray());
        Assert.Equal(Prompts, rows.Select(r => r.Prompt).ToArray());
        Assert.All(rows, r => Assert.InRange(r.NewTokens, 1, MaxTokens));
        Assert.All(rows, r => Assert.Equal(1f, r.AcceptanceLength));   // plain decoding: one token per target forward
        Assert.All(rows, r => Assert.True(r.TokensPerSecond > 0));
        Assert.All(rows, r => Assert.False(r.Speculative));
        Assert.All(rows, r => Assert.Equal(0, r.DraftRounds));
    }

    [Fact]
    public void A_row_longer_than_the_context_gets_its_reason_in_the_Error_column_and_the_other_rows_their_completions()
    {
        var ml = new MLContext(seed: 1);
        string tooLong = string.Join(" ", Enumerable.Repeat("Once upon a time there was a cat.", 80));   // ~800 tokens; the context is 512
        string[] prompts = [Prompts[0], tooLong, Prompts[2]];
        var data = PromptView(ml, prompts);
        using var model = ml.Beagle().Generate(Options()).Fit(data);

        var rows = Rows(ml, model.Transform(data));   // before: the enumeration ended with "Splitter/consolidator worker encountered exception"

        Assert.Equal(3, rows.Length);
        var reference = Reference(Prompts[0], Prompts[2]);
        Assert.Equal((reference[0], ""), (rows[0].Completion, rows[0].Error));
        Assert.Equal((reference[1], ""), (rows[2].Completion, rows[2].Error));
        Assert.Equal(("", 0), (rows[1].Completion, rows[1].NewTokens));
        Assert.Contains("context is 512", rows[1].Error);
        Assert.DoesNotContain("Parameter", rows[1].Error);

        var engine = ml.Model.CreatePredictionEngine<PromptInput, CompletionRow>(model);
        Assert.Contains("context is 512", engine.Predict(new PromptInput { Prompt = tooLong }).Error);
        Assert.Equal("", engine.Predict(new PromptInput { Prompt = Prompts[0] }).Error);
    }

    [Fact]
    public void PredictionEngine_completes_single_prompts_like_the_core_engine()
    {
        var ml = new MLContext(seed: 1);
        using var model = ml.Beagle().Generate(Options()).Fit(PromptView(ml, "x"));
        var engine = ml.Model.CreatePredictionEngine<PromptInput, CompletionRow>(model);

        var outs = Prompts.Select(p => engine.Predict(new PromptInput { Prompt = p }).Completion).ToArray();

        Assert.Equal(Reference(Prompts), outs);
    }

    [Fact]
    public void Composes_with_standard_transforms_upstream_and_downstream_and_the_whole_pipeline_round_trips()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Prompts.Select(p => new RawInput { Raw = p.ToUpperInvariant() }).ToArray());
        var pipeline = ml.Transforms.Text.NormalizeText("Prompt", "Raw", Microsoft.ML.Transforms.Text.TextNormalizingEstimator.CaseMode.Lower)
            .Append(ml.Beagle().Generate(Options()))
            .Append(ml.Transforms.Conversion.ConvertType("NewTokensF", "NewTokens", DataKind.Single))
            .Append(ml.Transforms.CopyColumns("Story", "Completion"));
        var model = pipeline.Fit(data);
        var lowered = Prompts.Select(p => p.ToLowerInvariant()).ToArray();
        var expected = Reference(lowered);

        var out1 = model.Transform(data);
        Assert.Equal(expected, out1.GetColumn<string>("Story").ToArray());
        Assert.Equal(out1.GetColumn<int>("NewTokens").Select(n => (float)n).ToArray(), out1.GetColumn<float>("NewTokensF").ToArray());

        using var dir = TestAssets.TempDir();
        BeagleModel.Save(ml, model, data.Schema, dir.File("pipeline.zip"));
        var ml2 = new MLContext(seed: 2);
        var reloaded = BeagleModel.Load(ml2, dir.File("pipeline.zip"), out var schema);
        try
        {
            Assert.Equal("Raw", Assert.Single(schema).Name);
            Assert.Equal(expected, reloaded.Transform(data).GetColumn<string>("Story").ToArray());
        }
        finally { DisposeBeagle(reloaded); DisposeBeagle(model); }
    }

    [Fact]
    public void Save_embeds_the_target_record_and_load_reproduces_the_greedy_output_including_with_PredictionEngine()
    {
        var ml = new MLContext(seed: 1);
        var data = PromptView(ml, Prompts);
        using var model = ml.Beagle().Generate(Options()).Fit(data);
        var before = Rows(ml, model.Transform(data)).Select(r => r.Completion).ToArray();
        using var dir = TestAssets.TempDir();
        var path = dir.File("beagle.zip");

        BeagleModel.Save(ml, model, data.Schema, path);
        using (var zip = ZipFile.OpenRead(path))
        {
            Assert.NotNull(zip.GetEntry("beagle/target.json"));
            Assert.NotNull(zip.GetEntry("beagle/settings.json"));
        }
        var ml2 = new MLContext(seed: 2);
        var reloaded = BeagleModel.Load(ml2, path, out _);
        try
        {
            var bt = Assert.IsType<BeagleTransformer>(reloaded);
            Assert.Equal(model.TargetFingerprint, bt.TargetFingerprint);
            Assert.Equal(before, Rows(ml2, reloaded.Transform(PromptView(ml2, Prompts))).Select(r => r.Completion).ToArray());
            var pe = ml2.Model.CreatePredictionEngine<PromptInput, CompletionRow>(reloaded);
            Assert.Equal(before[0], pe.Predict(new PromptInput { Prompt = Prompts[0] }).Completion);
            // A reloaded model still checks its input column, and saves again.
            Assert.Throws<ArgumentException>(() => reloaded.GetOutputSchema(ml2.Data.LoadFromEnumerable(new[] { new RawInput() }).Schema));
            BeagleModel.Save(ml2, reloaded, data.Schema, dir.File("again.zip"));
        }
        finally { DisposeBeagle(reloaded); }
    }

    [Fact]
    public void Loading_against_a_different_target_is_refused_with_the_fingerprints()
    {
        var ml = new MLContext(seed: 1);
        var data = PromptView(ml, "x");
        using var model = ml.Beagle().Generate(Options()).Fit(data);
        using var dir = TestAssets.TempDir();
        BeagleModel.Save(ml, model, data.Schema, dir.File("beagle.zip"));
        // Another target: the same file with one embedding weight changed (the first float after the 28-byte header).
        var other = File.ReadAllBytes(TestAssets.ModelPath);
        BitConverter.GetBytes(BitConverter.ToSingle(other, 28) + 0.5f).CopyTo(other, 28);
        File.WriteAllBytes(dir.File("other.bin"), other);

        var e = Assert.Throws<InvalidDataException>(() => BeagleModel.Load(new MLContext(), dir.File("beagle.zip"), out _,
            new BeagleLoadOptions { TargetPath = dir.File("other.bin"), TokenizerPath = TestAssets.TokenizerPath }));
        Assert.Contains("different target", e.Message);
        Assert.Contains(model.TargetFingerprint, e.Message);
    }

    [Fact]
    public void A_Beagle_zip_loaded_with_plain_Model_Load_points_to_BeagleModel_Load()
    {
        var ml = new MLContext(seed: 1);
        var data = PromptView(ml, "x");
        using var model = ml.Beagle().Generate(Options()).Fit(data);
        using var dir = TestAssets.TempDir();
        BeagleModel.Save(ml, model, data.Schema, dir.File("beagle.zip"));

        var ml2 = new MLContext();
        ml2.ComponentCatalog.RegisterAssembly(typeof(BeagleModel).Assembly);
        var e = Assert.ThrowsAny<Exception>(() => ml2.Model.Load(dir.File("beagle.zip"), out _));
        // ML.NET creates every saved component by reflection (MethodInfo/ConstructorInfo.Invoke in its
        // LoadableClassInfo.CreateInstanceCore) and rethrows the TargetInvocationException as it is: one for the
        // TransformerChain, one for the CustomMapping's loader. No exception type escapes unwrapped, so the factory's own
        // exception is the base one. Should ML.NET ever unwrap, this test fails and the README's advice can change.
        var outer = Assert.IsType<System.Reflection.TargetInvocationException>(e);
        var inner = Assert.IsType<System.Reflection.TargetInvocationException>(outer.InnerException);
        var cause = Assert.IsType<InvalidOperationException>(inner.InnerException);
        Assert.Contains("BeagleModel.Load", cause.Message);
    }

    [Fact]
    public void A_corrupt_Beagle_zip_gets_a_top_level_message_naming_the_file_the_entry_and_the_cause_from_BeagleModel_Load_only()
    {
        var ml = new MLContext(seed: 1);
        var data = PromptView(ml, "x");
        using var model = ml.Beagle().Generate(Options()).Fit(data);
        using var dir = TestAssets.TempDir();
        BeagleModel.Save(ml, model, data.Schema, dir.File("good.zip"));
        string[] components;
        using (var zip = ZipFile.OpenRead(dir.File("good.zip")))
            components = zip.Entries.Select(x => x.FullName).Where(n => n.EndsWith("Model.key", StringComparison.Ordinal)).ToArray();
        Assert.Equal(4, components.Length);   // the chain and its three transforms (copy, Beagle mapping, drop)

        foreach (var entry in components)
        {
            string path = dir.File(entry.Replace('/', '_') + ".zip");
            File.Copy(dir.File("good.zip"), path);
            BeagleMLNetDraftTests.ReplaceEntry(path, entry, new byte[40]);

            // Plain ML.NET: its own decoding error, wrapped, naming neither the file nor the entry.
            var plain = Assert.ThrowsAny<Exception>(() => new MLContext().Model.Load(path, out _));
            Assert.DoesNotContain(entry, plain.ToString());

            var e = Assert.Throws<InvalidDataException>(() => BeagleModel.Load(new MLContext(), path, out _));
            Assert.Contains($"{path}:{entry}: a damaged ML.NET component (40 bytes, shorter than ML.NET's 256-byte header)", e.Message);
        }

        // Damage behind a valid header: ML.NET's cause, with the file, at the top.
        string schema = dir.File("schema.zip");
        File.Copy(dir.File("good.zip"), schema);
        BeagleMLNetDraftTests.ReplaceEntry(schema, "Schema", new byte[40]);
        var s = Assert.Throws<InvalidDataException>(() => BeagleModel.Load(new MLContext(), schema, out _));
        Assert.StartsWith($"{schema}: ML.NET could not load the pipeline in it: ", s.Message);
        Assert.Contains("expected header size of 256", s.Message);

        // A truncated zip.
        var bytes = File.ReadAllBytes(dir.File("good.zip"));
        File.WriteAllBytes(dir.File("cut.zip"), bytes[..(bytes.Length / 2)]);
        var cut = Assert.Throws<InvalidDataException>(() => BeagleModel.Load(new MLContext(), dir.File("cut.zip"), out _));
        Assert.Contains($"{dir.File("cut.zip")}: not a zip file", cut.Message);

        // And the good one still loads.
        using var reloaded = Assert.IsType<BeagleTransformer>(BeagleModel.Load(new MLContext(), dir.File("good.zip"), out _));
    }

    [Fact]
    public void TrainDraft_validates_its_text_column_and_options()
    {
        var ml = new MLContext(seed: 1);
        var data = PromptView(ml, "x");
        var est = ml.Beagle().TrainDraft(new BeagleTrainDraftOptions { TargetPath = TestAssets.ModelPath, TextColumnName = "Story" });
        var e = Assert.Throws<ArgumentException>(() => est.Fit(data));
        Assert.Contains("'Story'", e.Message);
        Assert.Throws<ArgumentException>(() => ml.Beagle().TrainDraft(new BeagleTrainDraftOptions { TargetPath = TestAssets.ModelPath, Architecture = "medusa" }));
        Assert.Throws<ArgumentOutOfRangeException>(() => ml.Beagle().TrainDraft(new BeagleTrainDraftOptions { TargetPath = TestAssets.ModelPath, Epochs = 2, Stage1Epochs = 3 }));
        var every = Assert.Throws<ArgumentOutOfRangeException>(() => ml.Beagle().TrainDraft(new BeagleTrainDraftOptions { TargetPath = TestAssets.ModelPath, CheckpointEverySteps = 0 }));
        Assert.Equal(nameof(BeagleTrainDraftOptions.CheckpointEverySteps), every.ParamName);
    }

    [Fact]
    public void TrainDraft_honours_a_cancelled_token()
    {
        var ml = new MLContext(seed: 1);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        var est = ml.Beagle().TrainDraft(new BeagleTrainDraftOptions { TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, TextColumnName = "Prompt", CancellationToken = cts.Token });
        Assert.ThrowsAny<OperationCanceledException>(() => est.Fit(PromptView(ml, "Once upon a time there was a cat.")));
    }

    [Fact]
    public void TrainDraft_fits_a_tiny_draft_whose_speculative_greedy_output_equals_plain_greedy()
    {
        var ml = new MLContext(seed: 1);
        var log = new List<string>();
        ml.Log += (_, e) => { if (e.Source.Contains("Beagle")) lock (log) log.Add(e.Message); };
        var texts = TinyStoriesTexts(40);
        var data = ml.Data.LoadFromEnumerable(texts.Select(t => new PromptInput { Prompt = t }).ToArray());
        using var dir = TestAssets.TempDir();
        var est = ml.Beagle().TrainDraft(new BeagleTrainDraftOptions
        {
            TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, TextColumnName = "Prompt", MaxNewTokens = MaxTokens,
            Epochs = 2, Stage1Epochs = 1, MaxSequences = 8, BatchSize = 4, Window = 3, SimSteps = 2, SeqLen = 64, WarmupSteps = 1,
            EvalPrompts = 0, Plots = false, LogEverySteps = 1, OutputDir = dir.File("run"),
        });

        using var model = est.Fit(data);

        Assert.True(model.HasDraft);
        Assert.True(File.Exists(dir.File("run/draft/draft.json")));
        Assert.Equal(4, (int)Beagle.Drafting.DraftCheckpoint.ReadTraining(dir.File("run/draft"))["steps"]!);   // 8 sequences / 4 × 2 epochs
        lock (log)
        {
            Assert.Contains(log, m => m.Contains("step 1/4") && m.Contains("loss"));   // progress reaches mlContext.Log
            Assert.Contains(log, m => m.Contains("draft written to"));
        }
        // Lossless: greedy speculative decoding gives plain greedy's text whatever the (barely trained) draft proposes.
        var rows = Rows(ml, model.Transform(PromptView(ml, Prompts)));
        Assert.Equal(Reference(Prompts), rows.Select(r => r.Completion).ToArray());
        Assert.All(rows, r => Assert.True(r.AcceptanceLength >= 1f));
        Assert.All(rows, r => Assert.True(r.Speculative && r.DraftRounds > 0, "the fitted draft drafted"));
    }

    [Fact]
    public void TrainDraft_cancelled_during_training_saves_a_checkpoint_and_throws()
    {
        var ml = new MLContext(seed: 1);
        using var cts = new CancellationTokenSource();
        ml.Log += (_, e) => { if (e.Message.Contains("step 1/")) cts.Cancel(); };   // the first progress line cancels
        var data = ml.Data.LoadFromEnumerable(TinyStoriesTexts(40).Select(t => new PromptInput { Prompt = t }).ToArray());
        using var dir = TestAssets.TempDir();
        var est = ml.Beagle().TrainDraft(new BeagleTrainDraftOptions
        {
            TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, TextColumnName = "Prompt",
            Epochs = 1, MaxSequences = 40, BatchSize = 2, Window = 3, SimSteps = 2, SeqLen = 64,
            EvalPrompts = 0, Plots = false, LogEverySteps = 1, OutputDir = dir.File("run"), CancellationToken = cts.Token,
        });

        Assert.ThrowsAny<OperationCanceledException>(() => est.Fit(data));

        Assert.True(File.Exists(dir.File("run/checkpoint/state.json")));   // Resume = true continues from here
        Assert.False(Directory.Exists(dir.File("run/draft")));
    }

    static string[] TinyStoriesTexts(int n) => File.ReadLines(TestAssets.TinyStories).Where(l => l.Trim().Length > 0).Take(n).ToArray();

    [Fact]
    public void Fit_reports_through_the_MLContext_log()
    {
        var ml = new MLContext(seed: 1);
        var messages = new List<string>();
        ml.Log += (_, e) => { if (e.Source.Contains("Beagle")) lock (messages) messages.Add(e.Message); };
        using var model = ml.Beagle().Generate(Options()).Fit(PromptView(ml, "x"));
        lock (messages) Assert.Contains(messages, m => m.Contains("loading target"));
    }

    /// <summary>SchemaShape.Create(DataViewSchema) is internal in ML.NET 5 (dotnet-stack-notes.md section 5); tests call it by reflection.</summary>
    static SchemaShape Shape(DataViewSchema s) =>
        (SchemaShape)typeof(SchemaShape).GetMethod("Create", System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic, [typeof(DataViewSchema)])!.Invoke(null, [s])!;

    static void DisposeBeagle(ITransformer t)
    {
        if (t is IDisposable d) d.Dispose();
        else if (t is IEnumerable<ITransformer> chain) foreach (var x in chain) DisposeBeagle(x);
    }
}

/// <summary>
/// Drafts from <see cref="Beagle.Drafting.DraftCheckpoint"/>: random weights are enough here, because greedy speculative
/// decoding must give plain greedy's output whatever the draft proposes. Until trained drafts are committed under
/// models/stories260K/beagle, the tests create one in a temporary folder.
/// </summary>
public class BeagleMLNetDraftTests
{
    const int MaxTokens = 24;
    static readonly string[] Prompts = ["Once upon a time", "The little dog"];

    static string RandomDraft(TempDir dir, string arch = "beagle")
    {
        var path = dir.File("draft-" + arch);
        using var draft = Beagle.Drafting.DraftCheckpoint.Create(Beagle.Drafting.DraftConfig.ForTarget(TestAssets.Stories.Config, arch), TestAssets.Stories);
        Beagle.Drafting.DraftCheckpoint.Save(draft, path);
        return path;
    }

    static string[] Plain(params string[] prompts)
    {
        var g = new Generator(TestAssets.Stories, TestAssets.StoriesTokenizer);
        return prompts.Select(p => g.Complete(p, new GenerationOptions { MaxNewTokens = MaxTokens }).Text).ToArray();
    }

    [Theory]
    [InlineData("beagle")]
    [InlineData("eagle2")]
    public void A_draft_decodes_speculatively_travels_in_the_zip_and_reloads_with_the_same_greedy_output(string arch)
    {
        using var dir = TestAssets.TempDir();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Prompts.Select(p => new PromptInput { Prompt = p }).ToArray());
        using var model = ml.Beagle().Generate(new BeagleGenerateOptions
        {
            TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, DraftPath = RandomDraft(dir, arch), MaxNewTokens = MaxTokens,
        }).Fit(data);
        Assert.True(model.HasDraft);
        var before = ml.Data.CreateEnumerable<CompletionRow>(model.Transform(data), reuseRowObject: false).ToArray();
        Assert.Equal(Plain(Prompts), before.Select(r => r.Completion).ToArray());
        Assert.All(before, r => Assert.True(r.Speculative && r.DraftRounds > 0, "each row reports the draft rounds that ran"));

        BeagleModel.Save(ml, model, data.Schema, dir.File("m.zip"));
        using (var zip = ZipFile.OpenRead(dir.File("m.zip")))
        {
            Assert.NotNull(zip.GetEntry("beagle/draft/draft.json"));
            Assert.NotNull(zip.GetEntry("beagle/draft/draft.safetensors"));
            using var settings = new StreamReader(zip.GetEntry("beagle/settings.json")!.Open());
            Assert.Contains($"\"{arch}\"", settings.ReadToEnd());   // the draft's architecture is recorded
        }
        var reloaded = Assert.IsType<BeagleTransformer>(BeagleModel.Load(new MLContext(), dir.File("m.zip"), out _));
        using (reloaded)
        {
            Assert.True(reloaded.HasDraft);
            Assert.Equal(before.Select(r => r.Completion), reloaded.Transform(data).GetColumn<string>("Completion"));
        }
    }

    /// <summary>The drafts that need no training: named in the settings (no files in the zip), reloaded the same way.</summary>
    [Theory]
    [InlineData("draft-lm")]
    [InlineData("ngram")]
    public void A_training_free_draft_decodes_speculatively_is_recorded_by_name_and_reloads_with_the_same_greedy_output(string kind)
    {
        using var dir = TestAssets.TempDir();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Prompts.Select(p => new PromptInput { Prompt = p }).ToArray());
        using var model = ml.Beagle().Generate(new BeagleGenerateOptions
        {
            TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, MaxNewTokens = MaxTokens,
            DraftModel = kind == "draft-lm" ? TestAssets.ModelPath : null, NGram = kind == "ngram",
        }).Fit(data);
        Assert.True(model.HasDraft);
        var before = ml.Data.CreateEnumerable<CompletionRow>(model.Transform(data), reuseRowObject: false).ToArray();
        Assert.Equal(Plain(Prompts), before.Select(r => r.Completion).ToArray());
        Assert.Contains(before, r => r.Speculative && r.DraftRounds > 0);

        BeagleModel.Save(ml, model, data.Schema, dir.File("m.zip"));
        using (var zip = ZipFile.OpenRead(dir.File("m.zip")))
        {
            Assert.Null(zip.GetEntry("beagle/draft/draft.json"));
            using var settings = new StreamReader(zip.GetEntry("beagle/settings.json")!.Open());
            Assert.Contains($"\"{kind}\"", settings.ReadToEnd());
        }
        using var reloaded = Assert.IsType<BeagleTransformer>(BeagleModel.Load(new MLContext(), dir.File("m.zip"), out _));
        Assert.True(reloaded.HasDraft);
        Assert.Equal(before.Select(r => r.Completion), reloaded.Transform(data).GetColumn<string>("Completion"));
    }

    [Fact]
    public void Two_drafts_at_once_are_refused_by_name()
    {
        var e = Assert.Throws<ArgumentException>(() => new MLContext().Beagle().Generate(new BeagleGenerateOptions
        {
            TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, DraftModel = TestAssets.ModelPath, NGram = true,
        }));
        Assert.Contains("DraftModel and NGram", e.Message);
    }

    /// <summary>Rewrites one entry of a zip.</summary>
    internal static void ReplaceEntry(string zipPath, string entry, byte[] bytes)
    {
        using var zip = ZipFile.Open(zipPath, ZipArchiveMode.Update);
        zip.GetEntry(entry)!.Delete();
        using var s = zip.CreateEntry(entry).Open();
        s.Write(bytes);
    }

    [Fact]
    public void Load_errors_name_the_zip_and_the_entry_and_never_a_temporary_folder()
    {
        using var dir = TestAssets.TempDir();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new PromptInput { Prompt = "x" } });
        using (var model = ml.Beagle().Generate(new BeagleGenerateOptions
        {
            TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, DraftPath = RandomDraft(dir), MaxNewTokens = 4,
        }).Fit(data))
            BeagleModel.Save(ml, model, data.Schema, dir.File("good.zip"));

        // Not a zip at all.
        File.WriteAllBytes(dir.File("garbage.zip"), Enumerable.Range(0, 300).Select(i => (byte)(i * 7)).ToArray());
        var notZip = Assert.Throws<InvalidDataException>(() => BeagleModel.Load(new MLContext(), dir.File("garbage.zip"), out _));
        Assert.Contains(dir.File("garbage.zip"), notZip.Message);

        // A Beagle entry that is not JSON.
        File.Copy(dir.File("good.zip"), dir.File("settings.zip"));
        ReplaceEntry(dir.File("settings.zip"), "beagle/settings.json", "{ not json"u8.ToArray());
        var badJson = Assert.Throws<InvalidDataException>(() => BeagleModel.Load(new MLContext(), dir.File("settings.zip"), out _));
        Assert.Contains(dir.File("settings.zip"), badJson.Message);
        Assert.Contains("beagle/settings.json", badJson.Message);

        // A corrupt embedded draft: named by the zip and its entry, not by the temporary folder it was unpacked to (deleted by then).
        File.Copy(dir.File("good.zip"), dir.File("draft.zip"));
        ReplaceEntry(dir.File("draft.zip"), "beagle/draft/draft.safetensors", new byte[64]);
        var badDraft = Assert.ThrowsAny<Exception>(() => BeagleModel.Load(new MLContext(), dir.File("draft.zip"), out _));
        string all = badDraft.ToString();
        Assert.Contains(dir.File("draft.zip") + ":beagle/draft", badDraft.Message);
        Assert.Contains("draft.safetensors", badDraft.Message);
        Assert.DoesNotContain(Path.GetTempPath() + "beagle-mlnet-draft-", all);
    }

    [Fact]
    public void UseDraft_false_decodes_plainly_with_a_draft_loaded()
    {
        using var dir = TestAssets.TempDir();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Prompts.Select(p => new PromptInput { Prompt = p }).ToArray());
        using var model = ml.Beagle().Generate(new BeagleGenerateOptions
        {
            TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, DraftPath = RandomDraft(dir), UseDraft = false, MaxNewTokens = MaxTokens,
        }).Fit(data);
        var rows = ml.Data.CreateEnumerable<CompletionRow>(model.Transform(data), reuseRowObject: false).ToArray();
        Assert.Equal(Plain(Prompts), rows.Select(r => r.Completion).ToArray());
        Assert.All(rows, r => Assert.Equal(1f, r.AcceptanceLength));
        Assert.True(model.HasDraft);                          // a draft is loaded...
        Assert.All(rows, r => Assert.False(r.Speculative));   // ...and the rows say it was not used
    }

    [Fact]
    public void A_row_whose_rounds_never_drafted_says_it_was_not_speculative_though_the_draft_is_used()
    {
        using var dir = TestAssets.TempDir();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Prompts.Select(p => new PromptInput { Prompt = p }).ToArray());
        using var model = ml.Beagle().Generate(new BeagleGenerateOptions
        {
            // A confidence floor no node of an untrained draft clears: every round of every row is a plain step.
            TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, DraftPath = RandomDraft(dir), MaxNewTokens = MaxTokens,
            TreeTokens = 4, TreeDepth = 3, TreeTopK = 1, TreeMinProb = 0.999999,
        }).Fit(data);
        var rows = ml.Data.CreateEnumerable<CompletionRow>(model.Transform(data), reuseRowObject: false).ToArray();
        Assert.Equal(Plain(Prompts), rows.Select(r => r.Completion).ToArray());
        Assert.All(rows, r => Assert.False(r.Speculative));
        Assert.All(rows, r => Assert.Equal(0, r.AcceptedDraftTokens));
    }

    [Fact]
    public void A_draft_trained_for_another_target_is_refused_with_both_fingerprints()
    {
        using var dir = TestAssets.TempDir();
        // Another target: stories260K with one embedding weight changed (the first float after the 28-byte header).
        var other = File.ReadAllBytes(TestAssets.ModelPath);
        BitConverter.GetBytes(BitConverter.ToSingle(other, 28) + 0.5f).CopyTo(other, 28);
        File.WriteAllBytes(dir.File("other.bin"), other);
        string draftDir = dir.File("other-draft");
        using (var w = Beagle.Checkpoints.Llama2cCheckpoint.Load(dir.File("other.bin")))
        using (var otherModel = new Beagle.Models.LlamaModel(w))
        using (var draft = Beagle.Drafting.DraftCheckpoint.Create(Beagle.Drafting.DraftConfig.ForTarget(otherModel.Config), otherModel))
            Beagle.Drafting.DraftCheckpoint.Save(draft, draftDir);

        var ml = new MLContext(seed: 1);
        var e = Assert.Throws<InvalidOperationException>(() => ml.Beagle().Generate(new BeagleGenerateOptions
        {
            TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, DraftPath = draftDir,
        }).Fit(ml.Data.LoadFromEnumerable(new[] { new PromptInput { Prompt = "x" } })));
        Assert.Contains("was trained for", e.Message);
        Assert.IsType<InvalidDataException>(e.InnerException);
    }
}
