using Beagle.Checkpoints;
using Beagle.Models;
using Beagle.Runtime;
using Beagle.Tokenization;
using Spectre.Console;

namespace Beagle.Cli.Commands;

/// <summary>Loads the target (and tokenizer) a command asked for: --target (file or HF folder), else the default model.</summary>
internal static class CliModels
{
    /// <summary>The target named by <paramref name="s"/>; the caller owns (disposes) the result.</summary>
    /// <exception cref="ModelNotAvailableException">No --target and the default model cannot be found or downloaded.</exception>
    public static LoadedTarget Load(ModelSettings s, CancellationToken cancellationToken = default)
    {
        TorchSharp.torch.set_num_threads(s.Threads);
        var device = DeviceSelector.Resolve(s.Device);
        if (s.Target is not null && !DefaultModels.IsKnownName(s.Target)) return TargetLoader.Load(s.Target, s.Tokenizer, device);
        var (model, tokenizer) = KnownModel(s.Target, cancellationToken);
        return TargetLoader.Load(model, s.Tokenizer ?? tokenizer, device);
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
    /// A model known by name (<see cref="DefaultModels"/>; null = the default, the bundled stories5M). stories260K comes
    /// from $BEAGLE_MODELS or the user cache, downloaded into the cache once if needed.
    /// </summary>
    static (string Model, string Tokenizer) KnownModel(string? name, CancellationToken ct)
    {
        if (string.Equals(name, DefaultModels.Stories260K, StringComparison.OrdinalIgnoreCase))
        {
            var store = new ModelStore();
            var env = Environment.GetEnvironmentVariable(ModelStore.EnvironmentVariable);
            bool cached = string.IsNullOrEmpty(env) && ModelStore.Stories260K.All(f => File.Exists(Path.Combine(store.CacheDir, f.Name)));
            if (string.IsNullOrEmpty(env) && !cached)
                CliErrors.Stderr.MarkupLine($"[grey]stories260K not in {Markup.Escape(store.CacheDir)}: downloading it once (see `beagle download`)[/]");
        }
        var m = DefaultModels.ResolveAsync(name, cancellationToken: ct).GetAwaiter().GetResult();
        return (m.Model, m.Tokenizer);
    }

    /// <summary>
    /// The target and tokenizer paths: --target (tokenizer: --tokenizer, else found next to it by the loader), or the
    /// model known by name (<see cref="DefaultModels"/>: the bundled stories5M by default).
    /// </summary>
    public static (string Target, string Tokenizer) ResolvePaths(ModelSettings s, CancellationToken cancellationToken = default)
    {
        if (s.Target is not null && !DefaultModels.IsKnownName(s.Target))
        {
            if (s.Tokenizer is not null) return (s.Target, s.Tokenizer);
            var dir = Directory.Exists(s.Target) ? s.Target : Path.GetDirectoryName(Path.GetFullPath(s.Target))!;
            var found = new[] { "tokenizer.bin", "tok512.bin", "tokenizer.json", "tokenizer.model" }.Select(n => Path.Combine(dir, n)).FirstOrDefault(File.Exists);
            return (s.Target, found ?? throw new ArgumentException($"no tokenizer next to {s.Target}: pass --tokenizer PATH"));
        }
        var (model, tokenizer) = KnownModel(s.Target, cancellationToken);
        return (model, s.Tokenizer ?? tokenizer);
    }
}
