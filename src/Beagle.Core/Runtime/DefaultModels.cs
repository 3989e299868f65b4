using System.Security.Cryptography;

namespace Beagle.Runtime;

/// <summary>A target the product knows by name: its files and, where it ships with the project, their folder.</summary>
/// <param name="Name">What users type: <c>--target stories5M</c>.</param>
/// <param name="Model">The llama2.c checkpoint's path.</param>
/// <param name="Tokenizer">The tokenizer's path.</param>
/// <param name="Drafts">The folder whose <c>beagle/</c> and <c>eagle2/</c> subfolders hold its trained drafts (null: none).</param>
public sealed record KnownModel(string Name, string Model, string Tokenizer, string? Drafts);

/// <summary>
/// The models the product knows by name, resolved the same way by the CLI, the samples and the hosting faces:
/// <list type="bullet">
/// <item><b>stories5M</b> (the default): a 12-layer TinyStories model made for this project, bundled with the library
/// (copied next to every program that references Beagle.Core, sha256-checked on load), with its trained Beagle and
/// EAGLE-2 drafts. Needs no network.</item>
/// <item><b>stories260K</b>: karpathy's small model, found through <see cref="ModelStore"/> ($BEAGLE_MODELS, the user
/// cache, or a sha256-checked download), with its bundled drafts.</item>
/// </list>
/// </summary>
public static class DefaultModels
{
    public const string Stories5M = "stories5M";
    public const string Stories260K = "stories260K";

    /// <summary>The default target.</summary>
    public const string Default = Stories5M;

    /// <summary>stories5M.bin and tok512.bin as bundled (the same bytes as the project's reference copy).</summary>
    public static readonly IReadOnlyList<ModelFile> Stories5MFiles =
    [
        new("stories5M.bin", "stories5M/stories5M.bin", "c186d383db2d59085969392a83af344b22e9100cc8a8036eea6d63ab98b298ac"),
        new("tok512.bin", "stories5M/tok512.bin", "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312"),
    ];

    /// <summary>Where programs find the bundled models and drafts: <c>models/</c> next to the running assembly.</summary>
    public static string BundleDir => Path.Combine(AppContext.BaseDirectory, "models");

    /// <summary>Whether <paramref name="target"/> names a known model rather than a path.</summary>
    public static bool IsKnownName(string? target) =>
        string.Equals(target, Stories5M, StringComparison.OrdinalIgnoreCase) || string.Equals(target, Stories260K, StringComparison.OrdinalIgnoreCase);

    static readonly Dictionary<string, bool> Verified = new();

    /// <summary>
    /// The known model <paramref name="name"/> (default: <see cref="Default"/>). stories5M is checked against its pinned
    /// sha256 once per process; stories260K may download (see <see cref="ModelStore"/>).
    /// </summary>
    /// <exception cref="ModelNotAvailableException">The files are missing or damaged; the message says what to do.</exception>
    public static async Task<KnownModel> ResolveAsync(string? name = null, ModelStore? store = null, CancellationToken cancellationToken = default)
    {
        name ??= Default;
        if (string.Equals(name, Stories260K, StringComparison.OrdinalIgnoreCase))
        {
            (string model, string tokenizer) paths;
            try { paths = await (store ?? new ModelStore()).GetDefaultModelAsync(cancellationToken).ConfigureAwait(false); }
            catch (FileNotFoundException e) { throw new ModelNotAvailableException(e.Message, e); }
            return new KnownModel(Stories260K, paths.model, paths.tokenizer, DraftsDir(Stories260K));
        }
        if (!string.Equals(name, Stories5M, StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"unknown model name '{name}': the known names are {Stories5M} and {Stories260K}; otherwise pass a path", nameof(name));
        var dir = Path.Combine(BundleDir, Stories5M);
        foreach (var f in Stories5MFiles)
        {
            var path = Path.Combine(dir, f.Name);
            if (!File.Exists(path))
                throw new ModelNotAvailableException($"the bundled model file {path} is missing: reinstall or rebuild the program (the file ships with Beagle.Core), or pass --target PATH");
            lock (Verified)
            {
                if (Verified.ContainsKey(path)) continue;
                using var s = File.OpenRead(path);
                var hash = Convert.ToHexStringLower(SHA256.HashData(s));
                if (hash != f.Sha256)
                    throw new ModelNotAvailableException($"the bundled model file {path} is damaged (sha256 {hash}, expected {f.Sha256}): reinstall or rebuild the program");
                Verified[path] = true;
            }
        }
        return new KnownModel(Stories5M, Path.Combine(dir, Stories5MFiles[0].Name), Path.Combine(dir, Stories5MFiles[1].Name), DraftsDir(Stories5M));
    }

    /// <summary>Synchronous form of <see cref="ResolveAsync"/>.</summary>
    public static KnownModel Resolve(string? name = null, ModelStore? store = null) => ResolveAsync(name, store).GetAwaiter().GetResult();

    /// <summary>The bundled draft of architecture <paramref name="arch"/> for the known model <paramref name="name"/>, or null.</summary>
    public static string? BundledDraft(string name, string arch = "beagle")
    {
        var dir = DraftsDir(name) is { } d ? Path.Combine(d, arch) : null;
        return dir is not null && File.Exists(Path.Combine(dir, "draft.json")) ? dir : null;
    }

    static string? DraftsDir(string name)
    {
        var dir = Path.Combine(BundleDir, name);
        return Directory.Exists(dir) ? dir : null;
    }
}
