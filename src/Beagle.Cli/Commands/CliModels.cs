using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Models;
using Beagle.Runtime;
using Beagle.Tokenization;
using Spectre.Console;

namespace Beagle.Cli.Commands;

/// <summary>
/// The CLI's side of the composition root: command settings become a <see cref="ModelSpec"/>, and
/// <see cref="ModelLoader"/> loads it (--target: a file, a Hugging Face folder or a known model; default stories5M).
/// </summary>
internal static class CliModels
{
    /// <summary>The names the CLI gives the tree-budget settings, for error messages.</summary>
    public static readonly TreeBudgetSettingNames BudgetNames = new("--tree-tokens", "--tree-depth", "--tree-topk", "--tree-min-prob");

    /// <summary>The spec of a command's target (no draft: commands with draft options use <see cref="DraftSpec"/>).</summary>
    public static ModelSpec Spec(ModelSettings s) => new()
    {
        Target = s.Target ?? DefaultModels.Default, Tokenizer = s.Tokenizer, Device = s.Device, Threads = s.Threads, NoDraft = true,
    };

    /// <summary>
    /// The spec of a command that decodes with a draft: --draft, --draft-model or --ngram, else the known model's bundled
    /// Beagle draft; --no-draft none. The tree budget is calibrated for whatever the --tree-* options leave open.
    /// </summary>
    public static ModelSpec DraftSpec(DraftSettings s) => Spec(s) with
    {
        NoDraft = s.NoDraft, Draft = s.Draft, UseBundledDraft = true, TreeBudget = s.TreeBudget, Calibrate = true,
        DraftModel = s.DraftModel, NGram = s.NGram ? CliDrafts.NGramOptions(s.NGramMax, s.NGramMin) : null,
    };

    /// <summary>The target named by <paramref name="s"/>; the caller owns (disposes) the result.</summary>
    /// <exception cref="ModelNotAvailableException">No --target and the default model cannot be found or downloaded.</exception>
    public static LoadedTarget Load(ModelSettings s, CancellationToken cancellationToken = default)
    {
        var spec = Spec(s);
        return ModelLoader.LoadTarget(spec, Resolve(spec, cancellationToken));
    }

    /// <summary><see cref="Load"/> as a (model, tokenizer) pair; the caller owns the model.</summary>
    public static (LlamaModel Model, ITokenizer Tokenizer) LoadTarget(ModelSettings s, CancellationToken cancellationToken = default)
    {
        var t = Load(s, cancellationToken);
        return (t.Model, t.Tokenizer);
    }

    /// <summary>
    /// A random-weight model of <see cref="ShapeOrModelSettings.RandomShape"/> (no tokenizer), else the target as
    /// <see cref="LoadTarget"/>; with a display name. The caller owns the model.
    /// </summary>
    public static (LlamaModel Model, ITokenizer? Tokenizer, string Name) LoadShapeOrTarget(ShapeOrModelSettings s, CancellationToken cancellationToken = default)
    {
        if (s.RandomShape is null)
        {
            var (model, tokenizer) = LoadTarget(s, cancellationToken);
            return (model, tokenizer, s.Target ?? $"{DefaultModels.Default} (default)");
        }
        TorchSharp.torch.set_num_threads(s.Threads);
        using var w = LlamaWeights.Random(LlamaWeights.Shape(s.RandomShape));
        return (new LlamaModel(w, DeviceSelector.Resolve(s.Device)), null, $"random {s.RandomShape}");
    }

    /// <summary>
    /// <see cref="ModelLoader.Resolve"/> with the CLI's notes on stderr: stories260K about to be downloaded, a known model
    /// without its bundled draft (decoding is then plain).
    /// </summary>
    public static ResolvedModel Resolve(ModelSpec spec, CancellationToken cancellationToken = default)
    {
        if (string.Equals(spec.Target, DefaultModels.Stories260K, StringComparison.OrdinalIgnoreCase))
        {
            var store = new ModelStore();
            var env = Environment.GetEnvironmentVariable(ModelStore.EnvironmentVariable);
            bool cached = string.IsNullOrEmpty(env) && ModelStore.Stories260K.All(f => File.Exists(Path.Combine(store.CacheDir, f.Name)));
            if (string.IsNullOrEmpty(env) && !cached)
                CliErrors.Stderr.MarkupLine($"[grey]stories260K not in {Markup.Escape(store.CacheDir)}: downloading it once (see `beagle download`)[/]");
        }
        var files = ModelLoader.Resolve(spec, cancellationToken);
        if (files.BundledDraftMissing)
            CliConsole.Note($"{files.KnownName} has no bundled beagle draft (models/{files.KnownName}/beagle next to the program): decoding plainly; pass --draft DIR to speculate");
        return files;
    }

    /// <summary>
    /// The target and tokenizer paths: --target (tokenizer: --tokenizer, else null: found next to it by the loader), or
    /// the model known by name (<see cref="DefaultModels"/>: the bundled stories5M by default).
    /// </summary>
    public static (string Target, string? Tokenizer) ResolvePaths(ModelSettings s, CancellationToken cancellationToken = default)
    {
        var files = Resolve(Spec(s), cancellationToken);
        return (files.Target, files.Tokenizer);
    }
}
