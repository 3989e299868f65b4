using System.Runtime.CompilerServices;
using Beagle.Checkpoints;
using Beagle.Models;
using Beagle.Tokenization;

namespace Beagle.Tests.Infrastructure;

/// <summary>
/// Locates the read-only shared assets (../shared next to the repository, or $BEAGLE_SHARED) and caches the
/// stories260K target. Tests never copy these files into the repository.
/// </summary>
public static class TestAssets
{
    [ModuleInitializer]
    internal static void Init()
    {
        // Deterministic and contention-proof: one intra-op thread in tests (dotnet-stack-notes.md, OpenMP pitfall).
        TorchSharp.torch.set_num_threads(1);
        TorchSharp.torch.manual_seed(1234);
    }

    static readonly Lazy<string> SharedDir = new(() =>
    {
        var env = Environment.GetEnvironmentVariable("BEAGLE_SHARED");
        if (!string.IsNullOrEmpty(env) && Directory.Exists(env)) return env;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            var candidate = Path.Combine(d.FullName, "shared");
            if (File.Exists(Path.Combine(candidate, "models", "stories260K", "stories260K.bin"))) return candidate;
        }
        throw new InvalidOperationException("shared assets not found: set BEAGLE_SHARED to the folder that holds models/stories260K");
    });

    public static string Shared => SharedDir.Value;
    public static string ModelPath => Path.Combine(Shared, "models", "stories260K", "stories260K.bin");
    public static string TokenizerPath => Path.Combine(Shared, "models", "stories260K", "tok512.bin");
    public static string Golden(string name) => Golden("stories260K", name);
    /// <summary>A golden file of the C reference for the shared model <paramref name="model"/> (stories260K or stories5M).</summary>
    public static string Golden(string model, string name) => Path.Combine(Shared, "models", model, "golden", name);
    public static string TinyStories => Path.Combine(Shared, "data", "tinystories", "tinystories_val_dev.txt");

    static readonly Lazy<LlamaModel> Model = new(() => { using var w = Llama2cCheckpoint.Load(ModelPath); return new LlamaModel(w); });
    static readonly Lazy<Llama2cTokenizer> Tok = new(() => Llama2cTokenizer.Load(TokenizerPath, 512));

    /// <summary>The stories260K target, loaded once per test run. Do not dispose.</summary>
    public static LlamaModel Stories => Model.Value;
    public static Llama2cTokenizer StoriesTokenizer => Tok.Value;

    /// <summary>A shared model by name, loaded once per test run (stories260K or stories5M). Do not dispose.</summary>
    public static LlamaModel Target(string model) => model == "stories260K" ? Stories : Stories5M;

    static readonly Lazy<LlamaModel> Model5M = new(() => { using var w = Llama2cCheckpoint.Load(Path.Combine(Shared, "models", "stories5M", "stories5M.bin")); return new LlamaModel(w); });

    /// <summary>The stories5M target (12 layers, dim 192; the same tokenizer as stories260K), loaded once per test run. Do not dispose.</summary>
    public static LlamaModel Stories5M => Model5M.Value;

    public static int[] ReadIds(string goldenName) => ReadIds("stories260K", goldenName);

    public static int[] ReadIds(string model, string goldenName) =>
        File.ReadAllText(Golden(model, goldenName)).Split((char[])[' ', '\n', '\r', '\t'], StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();

    /// <summary>A fresh temporary directory, deleted by the returned handle.</summary>
    public static TempDir TempDir() => new();
}

public sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "beagle-tests-" + Guid.NewGuid().ToString("N")[..12]);
    public TempDir() => Directory.CreateDirectory(Path);
    public string File(string name) => System.IO.Path.Combine(Path, name);
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}
