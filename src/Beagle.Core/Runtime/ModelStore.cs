using System.Security.Cryptography;

namespace Beagle.Runtime;

/// <summary>One file of the default model: its name, where to download it and its expected sha256.</summary>
public sealed record ModelFile(string Name, string RelativeUrl, string Sha256);

/// <summary>Progress of one file's download; <paramref name="TotalBytes"/> is null until the server says.</summary>
public sealed record DownloadProgress(string File, long BytesReceived, long? TotalBytes);

/// <summary>
/// Finds the default target (karpathy's stories260K + tok512, MIT) on a user's machine: the folder named by
/// BEAGLE_MODELS, else the user cache (~/.cache/beagle/models/stories260K or $XDG_CACHE_HOME/beagle/...), else it
/// downloads the files once into that cache, checks their sha256 and moves each into place atomically.
/// The repository never carries model files.
/// </summary>
public sealed class ModelStore
{
    public const string EnvironmentVariable = "BEAGLE_MODELS";
    public const string DefaultBaseUrl = "https://huggingface.co/karpathy/tinyllamas/resolve/main/";

    /// <summary>stories260K.bin and tok512.bin, byte-identical to upstream.</summary>
    public static readonly IReadOnlyList<ModelFile> Stories260K =
    [
        new("stories260K.bin", "stories260K/stories260K.bin", "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696"),
        new("tok512.bin", "stories260K/tok512.bin", "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312"),
    ];

    public static string HowToProvide =>
        $"Provide the files one of these ways: set {EnvironmentVariable}=<folder with stories260K.bin and tok512.bin>; " +
        "or run `beagle download` on a machine with internet (it fills the cache folder above, which you can copy); " +
        "or pass --target <model> and --tokenizer <tokenizer>.";

    readonly string? _modelsDir;
    readonly string _cacheDir;
    readonly Uri _baseUrl;
    readonly HttpMessageHandler? _handler;
    readonly TimeSpan _timeout;

    /// <param name="modelsDir">A folder holding the files (default: $BEAGLE_MODELS).</param>
    /// <param name="cacheDir">The download cache (default: the user cache, see <see cref="DefaultCacheDir"/>).</param>
    /// <param name="baseUrl">Where to download from (default <see cref="DefaultBaseUrl"/>).</param>
    /// <param name="handler">An HTTP handler (tests serve bytes from a fake one).</param>
    /// <param name="timeout">Per-request timeout; short so an offline machine fails fast (default 20 s).</param>
    /// <param name="useEnvironment">Read $BEAGLE_MODELS when no <paramref name="modelsDir"/> is given (default); false = cache and
    /// download only, whatever the environment says (tests of the download path).</param>
    public ModelStore(string? modelsDir = null, string? cacheDir = null, string? baseUrl = null, HttpMessageHandler? handler = null, TimeSpan? timeout = null,
        bool useEnvironment = true)
    {
        var env = useEnvironment ? Environment.GetEnvironmentVariable(EnvironmentVariable) : null;
        _modelsDir = modelsDir ?? (string.IsNullOrEmpty(env) ? null : env);
        _cacheDir = cacheDir ?? DefaultCacheDir();
        _baseUrl = new Uri(baseUrl ?? DefaultBaseUrl);
        _handler = handler;
        _timeout = timeout ?? TimeSpan.FromSeconds(20);
    }

    /// <summary>$XDG_CACHE_HOME/beagle/models/stories260K, or ~/.cache/beagle/models/stories260K (<see cref="BeaglePaths"/>).</summary>
    public static string DefaultCacheDir() => BeaglePaths.ModelCacheDir("stories260K");

    /// <summary>Paths of stories260K.bin and tok512.bin, downloading them when needed.</summary>
    public async Task<(string Model, string Tokenizer)> GetDefaultModelAsync(CancellationToken cancellationToken = default)
    {
        if (_modelsDir is not null)
        {
            // An explicit folder is used as it is: never download behind the user's back, but say what is missing.
            var missing = Stories260K.Where(f => !File.Exists(Path.Combine(_modelsDir, f.Name))).Select(f => f.Name).ToList();
            if (missing.Count > 0)
                throw new FileNotFoundException($"{EnvironmentVariable} points to {_modelsDir}, which lacks {string.Join(" and ", missing)}. {HowToProvide}");
            return (Path.Combine(_modelsDir, Stories260K[0].Name), Path.Combine(_modelsDir, Stories260K[1].Name));
        }
        var created = CreateFolder(_cacheDir);
        try
        {
            foreach (var f in Stories260K)
            {
                var target = Path.Combine(_cacheDir, f.Name);
                if (File.Exists(target)) continue;   // only complete, verified files are ever moved into the cache
                await DownloadAsync(f, target, cancellationToken).ConfigureAwait(false);
            }
        }
        catch { RemoveIfEmpty(created); throw; }
        return (Path.Combine(_cacheDir, Stories260K[0].Name), Path.Combine(_cacheDir, Stories260K[1].Name));
    }

    /// <summary>The folder downloads go to (never the BEAGLE_MODELS folder, which is used as it is).</summary>
    public string CacheDir => _cacheDir;

    /// <summary>The full download address of a file of the default model.</summary>
    public Uri UrlOf(ModelFile f) => new(_baseUrl, f.RelativeUrl);

    /// <summary>
    /// Fills the cache folder with the default model, whatever BEAGLE_MODELS says: files already there are kept unless
    /// <paramref name="force"/>; each download is sha256-checked and moved into place atomically.
    /// </summary>
    public async Task<(string Model, string Tokenizer)> DownloadDefaultModelAsync(bool force = false, IProgress<DownloadProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var created = CreateFolder(_cacheDir);
        try
        {
            foreach (var f in Stories260K)
            {
                var target = Path.Combine(_cacheDir, f.Name);
                if (File.Exists(target) && !force)
                {
                    long n = new FileInfo(target).Length;
                    progress?.Report(new DownloadProgress(f.Name, n, n));
                    continue;
                }
                await DownloadAsync(f, target, cancellationToken, progress).ConfigureAwait(false);
            }
        }
        catch { RemoveIfEmpty(created); throw; }
        return (Path.Combine(_cacheDir, Stories260K[0].Name), Path.Combine(_cacheDir, Stories260K[1].Name));
    }

    /// <summary>Creates <paramref name="dir"/>; returns the folders this created, outermost first (none if it existed).</summary>
    static List<string> CreateFolder(string dir)
    {
        var created = new List<string>();
        for (var d = Path.GetFullPath(dir); !string.IsNullOrEmpty(d) && !Directory.Exists(d); d = Path.GetDirectoryName(d))
            created.Insert(0, d);
        Directory.CreateDirectory(dir);
        return created;
    }

    /// <summary>
    /// Removes the folders a failed download created, innermost first, as long as they are empty: an offline attempt
    /// leaves no empty cache folder behind (which would look like a cache that is there but broken).
    /// </summary>
    static void RemoveIfEmpty(List<string> created)
    {
        for (int i = created.Count - 1; i >= 0; i--)
        {
            try
            {
                if (Directory.EnumerateFileSystemEntries(created[i]).Any()) return;
                Directory.Delete(created[i]);
            }
            catch (IOException) { return; }
            catch (UnauthorizedAccessException) { return; }
        }
    }

    /// <summary>Synchronous form of <see cref="GetDefaultModelAsync"/>.</summary>
    public (string Model, string Tokenizer) GetDefaultModel() => GetDefaultModelAsync().GetAwaiter().GetResult();

    async Task DownloadAsync(ModelFile f, string target, CancellationToken ct, IProgress<DownloadProgress>? progress = null)
    {
        var url = UrlOf(f);
        var tmp = target + "." + Guid.NewGuid().ToString("N")[..8] + ".part";
        try
        {
            using var http = _handler is null ? new HttpClient() : new HttpClient(_handler, disposeHandler: false);
            http.Timeout = _timeout;
            byte[] bytes;
            try { bytes = await ReadAllAsync(http, url, f.Name, progress, ct).ConfigureAwait(false); }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException && !ct.IsCancellationRequested)
            {
                throw new ModelNotAvailableException($"Could not download {f.Name} from {url} into {_cacheDir} ({e.Message}). {HowToProvide}", e);
            }
            var hash = Convert.ToHexStringLower(SHA256.HashData(bytes));
            if (hash != f.Sha256)
                throw new ModelNotAvailableException($"Downloaded {f.Name} from {url} has sha256 {hash}, expected {f.Sha256}; it was not kept. {HowToProvide}");
            await File.WriteAllBytesAsync(tmp, bytes, ct).ConfigureAwait(false);
            File.Move(tmp, target, overwrite: true);   // atomic within one folder: readers see nothing or the whole file
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    /// <summary>The body of <paramref name="url"/>, reporting bytes as they arrive (the files are small: ~1 MB).</summary>
    static async Task<byte[]> ReadAllAsync(HttpClient http, Uri url, string name, IProgress<DownloadProgress>? progress, CancellationToken ct)
    {
        using var response = await http.GetAsync(url, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
        response.EnsureSuccessStatusCode();
        long? total = response.Content.Headers.ContentLength;
        await using var body = await response.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
        using var buffer = total is { } t ? new MemoryStream((int)Math.Min(t, int.MaxValue)) : new MemoryStream();
        var chunk = new byte[81920];
        progress?.Report(new DownloadProgress(name, 0, total));
        int read;
        while ((read = await body.ReadAsync(chunk, ct).ConfigureAwait(false)) > 0)
        {
            buffer.Write(chunk, 0, read);
            progress?.Report(new DownloadProgress(name, buffer.Length, total));
        }
        return buffer.ToArray();
    }
}

/// <summary>The default model is neither present nor downloadable; the message says how to provide it.</summary>
public sealed class ModelNotAvailableException(string message, Exception? inner = null) : Exception(message, inner);
