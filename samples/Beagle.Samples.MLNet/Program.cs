// Beagle in an ML.NET pipeline: story text -> IDataView -> fit a tiny draft with the core trainer -> complete a few
// prompts speculatively -> save the model with its draft -> reload -> check the reloaded pipeline's greedy output.
//
// Usage: dotnet run --project samples/Beagle.Samples.MLNet -c Release [-- --data FILE] [--target PATH] [--tokenizer PATH]
//   text:  --data FILE (one story or paragraph per line), else the target writes its own: the Generate estimator
//          continues a few story openings (the first step of the pipeline below)
//   model: --target PATH (or stories260K), else the bundled stories5M
// Exits 0 when the reloaded pipeline reproduces the fitted one's greedy completions, 1 otherwise or on a failure (one
// line on stderr), 2 on a bad argument. Runs in well under a minute on a 2-core CPU.
using Beagle.MLNet;
using Beagle.Runtime;
using Microsoft.ML;

string? dataPath = null, target = null, tokenizer = null;
try
{
    for (int i = 0; i < args.Length; i++)
    {
        string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
        switch (args[i])
        {
            case "--data": dataPath = Value(); break;
            case "--target": target = Value(); break;
            case "--tokenizer": tokenizer = Value(); break;
            default: throw new ArgumentException($"unknown argument '{args[i]}' (use --data, --target, --tokenizer)");
        }
    }
    if (dataPath is not null && !File.Exists(dataPath)) throw new ArgumentException($"--data: no file at '{dataPath}'");
    if (target is not null && !DefaultModels.IsKnownName(target) && !File.Exists(target) && !Directory.Exists(target)) throw new ArgumentException($"--target: no file or folder at '{target}'");
    // The product's composition root turns a known name (or none: the default) into its files.
    var files = ModelLoader.Resolve(new ModelSpec { Target = target ?? DefaultModels.Default, Tokenizer = tokenizer, NoDraft = true });
    (target, tokenizer) = (files.Target, files.Tokenizer);
}
catch (Exception e) when (e is ArgumentException or ModelNotAvailableException) { Console.Error.WriteLine($"error: {e.Message}"); return 2; }

try { return Run(target, tokenizer, dataPath); }
catch (Exception e) when (e is not OperationCanceledException)
{
    var inner = e; while (inner.InnerException is not null) inner = inner.InnerException;
    Console.Error.WriteLine($"error: {e.Message}{(inner != e && !e.Message.Contains(inner.Message) ? $" ({inner.Message})" : "")}".ReplaceLineEndings(" "));
    return 1;
}

static int Run(string target, string? tokenizer, string? dataPath)
{
    var ml = new MLContext(seed: 1);
    // Training progress, one line each, on stderr (stdout has the results).
    ml.Log += (_, e) => { if (e.Source.StartsWith("Beagle; TrainDraft", StringComparison.Ordinal) && e.Kind == Microsoft.ML.Runtime.ChannelMessageKind.Info) Console.Error.WriteLine($"  [training] {e.Message}"); };

    Story[] paragraphs;
    if (dataPath is not null)
    {
        // One row per paragraph of the file.
        paragraphs = File.ReadLines(dataPath).Where(l => l.Trim().Length > 0).Take(2000).Select(l => new Story { Text = l.Trim() }).ToArray();
        Console.WriteLine($"loaded {paragraphs.Length} paragraphs from {dataPath}");
    }
    else
    {
        // No text given: the target writes it. The Generate estimator completes a column of story openings (sampled, so
        // that the openings give different stories), and opening + completion becomes the training text.
        var writer = ml.Beagle().Generate(new BeagleGenerateOptions
        {
            TargetPath = target, TokenizerPath = tokenizer, InputColumnName = nameof(Prompt.Text),
            MaxNewTokens = 160, Temperature = 0.8f, TopP = 0.95f, Seed = 7,
        });
        var openings = ml.Data.LoadFromEnumerable(Seeds.StoryOpenings.Select(o => new Prompt { Text = o }));
        using var written = writer.Fit(openings);
        paragraphs = ml.Data.CreateEnumerable<Completed>(written.Transform(openings), reuseRowObject: false)
            .Select(r => new Story { Text = (r.Text + r.Completion).ReplaceLineEndings(" ").Trim() }).ToArray();
        Console.WriteLine($"the target wrote {paragraphs.Length} stories of up to 160 tokens to train on");
    }
    if (paragraphs.Length == 0) throw new InvalidDataException($"{dataPath}: no text to train on");
    IDataView stories = ml.Data.LoadFromEnumerable(paragraphs);

    using var work = new TempFolder();
    // A tiny draft: 2 epochs over at most 32 sequences of 64 tokens in batches of 8 = at most 8 steps (seconds on a
    // laptop CPU). Far too little to be a good draft, but decoding is lossless whatever the draft proposes, and
    // AcceptanceLength shows how many tokens each target forward gave.
    var train = new BeagleTrainDraftOptions
    {
        TargetPath = target, TokenizerPath = tokenizer, TextColumnName = nameof(Story.Text), InputColumnName = nameof(Prompt.Text),
        Architecture = "beagle", Epochs = 2, Stage1Epochs = 1, MaxSequences = 32, BatchSize = 8, SeqLen = 64, Window = 5, SimSteps = 3,
        WarmupSteps = 2, EvalPrompts = 2, Plots = false, LogEverySteps = 4,
        OutputDir = Path.Combine(work.Path, "run"), MaxNewTokens = 32,
    };
    Console.WriteLine("fitting a tiny Beagle draft ...");
    using BeagleTransformer model = ml.Beagle().TrainDraft(train).Fit(stories);

    // Prompts: the first words of a few stories.
    var prompts = paragraphs.Select(p => string.Join(' ', p.Text.Split(' ').Take(5))).Distinct().Take(3)
        .Select(t => new Prompt { Text = t }).ToArray();
    IDataView promptView = ml.Data.LoadFromEnumerable(prompts);
    var rows = ml.Data.CreateEnumerable<Completed>(model.Transform(promptView), reuseRowObject: false).ToArray();
    foreach (var r in rows)
        Console.WriteLine($"Prompt: {r.Text}\n  Completion: {r.Completion.Replace('\n', ' ')}\n  NewTokens={r.NewTokens} AcceptanceLength={r.AcceptanceLength:F2} TokensPerSecond={r.TokensPerSecond:F0}");

    string zip = Path.Combine(work.Path, "beagle-model.zip");
    BeagleModel.Save(ml, model, promptView.Schema, zip);
    Console.WriteLine($"saved {Path.GetFileName(zip)} ({new FileInfo(zip).Length / 1024} KiB, draft embedded: {model.HasDraft})");

    var ml2 = new MLContext(seed: 2);
    var reloaded = BeagleModel.Load(ml2, zip, out _);
    var again = ml2.Data.CreateEnumerable<Completed>(reloaded.Transform(ml2.Data.LoadFromEnumerable(prompts)), reuseRowObject: false).ToArray();
    bool same = rows.Select(r => r.Completion).SequenceEqual(again.Select(r => r.Completion));
    Console.WriteLine($"reload: the reloaded pipeline gives the same greedy output for {rows.Length} prompts: {same}");
    (reloaded as IDisposable)?.Dispose();
    return same ? 0 : 1;
}

/// <summary>Story openings for the target to continue when no --data is given (TinyStories style: what the model knows).</summary>
static class Seeds
{
    public static readonly string[] StoryOpenings =
    [
        "Once upon a time, there was a little dog named Max.", "Lily had a red ball.", "One day, Tom went to the park with his mom.",
        "There was a big tree in the garden.", "Sam and Sue wanted to bake a cake.", "A little bird could not fly.",
        "Ben found a shiny stone by the river.", "Mia was sad because it was raining.", "The cat saw a mouse in the kitchen.",
        "Anna wanted to help her dad.", "Tim had a new blue car.", "It was a sunny day at the beach.",
        "The little fish lived in a pond.", "Lucy liked to draw pictures.", "Jack heard a noise in the night.",
        "Grandma gave Sara a box.",
    ];
}

sealed class Story { public string Text { get; set; } = ""; }
sealed class Prompt { public string Text { get; set; } = ""; }
sealed class Completed
{
    public string Text { get; set; } = "";
    public string Completion { get; set; } = "";
    public int NewTokens { get; set; }
    public float AcceptanceLength { get; set; }
    public float TokensPerSecond { get; set; }
}

sealed class TempFolder : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "beagle-mlnet-sample-" + Guid.NewGuid().ToString("N")[..8]);
    public TempFolder() => Directory.CreateDirectory(Path);
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}
