// Beagle in an ML.NET pipeline: TinyStories text -> IDataView -> fit a tiny draft with the core trainer -> complete a
// few prompts speculatively -> save the model with its draft -> reload -> check the reloaded pipeline's greedy output.
//
// Usage: dotnet run --project samples/Beagle.Samples.MLNet [tinystories.txt]
//   text:  the argument, else $BEAGLE_DATA, else the development default /work/shared/data/tinystories/tinystories_val_dev.txt
//   model: $BEAGLE_MODELS (a folder holding stories260K.bin and tok512.bin), else the development default /work/shared/models/stories260K
// Exits 0 when the reloaded pipeline reproduces the fitted one's greedy completions, 1 otherwise, 2 on missing inputs.
using Beagle.MLNet;
using Microsoft.ML;

const string DevData = "/work/shared/data/tinystories/tinystories_val_dev.txt";   // development default only
const string DevModels = "/work/shared/models/stories260K";                        // development default only

string dataPath = args.Length > 0 ? args[0] : Environment.GetEnvironmentVariable("BEAGLE_DATA") ?? DevData;
string modelDir = Environment.GetEnvironmentVariable("BEAGLE_MODELS") ?? DevModels;
string target = Path.Combine(modelDir, "stories260K.bin"), tokenizer = Path.Combine(modelDir, "tok512.bin");
if (!File.Exists(dataPath)) { Console.Error.WriteLine($"no TinyStories text at '{dataPath}': pass a path or set BEAGLE_DATA"); return 2; }
if (!File.Exists(target) || !File.Exists(tokenizer)) { Console.Error.WriteLine($"no stories260K.bin/tok512.bin in '{modelDir}': set BEAGLE_MODELS"); return 2; }

var ml = new MLContext(seed: 1);
ml.Log += (_, e) => { if (e.Source.StartsWith("Beagle", StringComparison.Ordinal) && e.Kind == Microsoft.ML.Runtime.ChannelMessageKind.Info) Console.WriteLine($"  [log] {e.Message}"); };

// One row per paragraph of the corpus.
var paragraphs = File.ReadLines(dataPath).Where(l => l.Trim().Length > 0).Take(2000).Select(l => new Story { Text = l.Trim() }).ToArray();
IDataView stories = ml.Data.LoadFromEnumerable(paragraphs);
Console.WriteLine($"loaded {paragraphs.Length} paragraphs from {dataPath}");

using var work = new TempFolder();
// A tiny draft: 2 epochs over 64 sequences of 128 tokens in batches of 8 = 16 steps (a few seconds on a laptop CPU).
// Far too little to be a good draft, but decoding is lossless whatever the draft proposes, and AcceptanceLength shows
// how many tokens each target forward gave.
var train = new BeagleTrainDraftOptions
{
    TargetPath = target, TokenizerPath = tokenizer, TextColumnName = nameof(Story.Text), InputColumnName = nameof(Prompt.Text),
    Architecture = "beagle", Epochs = 2, Stage1Epochs = 1, MaxSequences = 64, BatchSize = 8, SeqLen = 128, Window = 5, SimSteps = 3,
    WarmupSteps = 4, EvalPrompts = 4, Plots = false, LogEverySteps = 4,
    OutputDir = Path.Combine(work.Path, "run"), MaxNewTokens = 32,
};
Console.WriteLine("fitting a tiny Beagle draft (16 steps) ...");
BeagleTransformer model = ml.Beagle().TrainDraft(train).Fit(stories);

// Prompts: the first words of a few stories.
var prompts = paragraphs.Select(p => string.Join(' ', p.Text.Split(' ').Take(5))).Distinct().Take(3)
    .Select(t => new Prompt { Text = t }).ToArray();
IDataView promptView = ml.Data.LoadFromEnumerable(prompts);
var rows = ml.Data.CreateEnumerable<Completed>(model.Transform(promptView), reuseRowObject: false).ToArray();
foreach (var r in rows)
    Console.WriteLine($"Prompt: {r.Text}\n  Completion: {r.Completion.Replace('\n', ' ')}\n  NewTokens={r.NewTokens} AcceptanceLength={r.AcceptanceLength:F2} TokensPerSecond={r.TokensPerSecond:F0}");

string zip = Path.Combine(work.Path, "beagle-model.zip");
BeagleModel.Save(ml, model, promptView.Schema, zip);
Console.WriteLine($"saved {zip} ({new FileInfo(zip).Length / 1024} KiB, draft embedded: {model.HasDraft})");

var ml2 = new MLContext(seed: 2);
var reloaded = BeagleModel.Load(ml2, zip, out _);
var again = ml2.Data.CreateEnumerable<Completed>(reloaded.Transform(ml2.Data.LoadFromEnumerable(prompts)), reuseRowObject: false).ToArray();
bool same = rows.Select(r => r.Completion).SequenceEqual(again.Select(r => r.Completion));
Console.WriteLine($"reload: the reloaded pipeline gives the same greedy output for {rows.Length} prompts: {same}");
(reloaded as IDisposable)?.Dispose();
model.Dispose();
return same ? 0 : 1;

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
