using System.Net;
using Beagle.Runtime;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Runtime;

/// <summary>No internet here: downloads are served by a fake handler (or refused by a closed local port).</summary>
public class ModelStoreTests
{
    static string SharedModels => Path.GetDirectoryName(TestAssets.ModelPath)!;

    sealed class FakeHandler(Func<Uri, byte[]?> serve) : HttpMessageHandler
    {
        public List<Uri> Requests { get; } = [];
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            Requests.Add(request.RequestUri!);
            var body = serve(request.RequestUri!);
            return Task.FromResult(body is null
                ? new HttpResponseMessage(HttpStatusCode.NotFound)
                : new HttpResponseMessage(HttpStatusCode.OK) { Content = new ByteArrayContent(body) });
        }
    }

    static byte[]? Upstream(Uri u) =>
        u.AbsolutePath.EndsWith("/stories260K/stories260K.bin") ? File.ReadAllBytes(TestAssets.ModelPath)
        : u.AbsolutePath.EndsWith("/stories260K/tok512.bin") ? File.ReadAllBytes(TestAssets.TokenizerPath) : null;

    [Fact]
    public void A_models_folder_is_used_as_it_is()
    {
        var (model, tok) = new ModelStore(modelsDir: SharedModels).GetDefaultModel();
        Assert.Equal(TestAssets.ModelPath, model);
        Assert.Equal(TestAssets.TokenizerPath, tok);
    }

    [Fact]
    public void The_BEAGLE_MODELS_variable_names_the_folder()
    {
        var old = Environment.GetEnvironmentVariable(ModelStore.EnvironmentVariable);
        ModelStore store;
        try { Environment.SetEnvironmentVariable(ModelStore.EnvironmentVariable, SharedModels); store = new ModelStore(); }
        finally { Environment.SetEnvironmentVariable(ModelStore.EnvironmentVariable, old); }
        Assert.Equal(TestAssets.ModelPath, store.GetDefaultModel().Model);
    }

    [Fact]
    public void A_models_folder_missing_a_file_says_which_and_how_to_fix_it()
    {
        using var dir = TestAssets.TempDir();
        var e = Assert.Throws<FileNotFoundException>(() => new ModelStore(modelsDir: dir.Path).GetDefaultModel());
        Assert.Contains("stories260K.bin", e.Message);
        Assert.Contains("BEAGLE_MODELS=", e.Message);
    }

    [Fact]
    public void Verified_downloads_land_in_the_cache_and_are_reused()
    {
        using var cache = TestAssets.TempDir();
        var handler = new FakeHandler(Upstream);
        var store = new ModelStore(cacheDir: cache.Path, handler: handler, useEnvironment: false);
        var (model, tok) = store.GetDefaultModel();
        Assert.Equal(File.ReadAllBytes(TestAssets.ModelPath), File.ReadAllBytes(model));
        Assert.Equal(File.ReadAllBytes(TestAssets.TokenizerPath), File.ReadAllBytes(tok));
        Assert.Contains(handler.Requests, u => u.ToString() == "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/stories260K.bin");
        Assert.Equal(2, handler.Requests.Count);
        store.GetDefaultModel();
        Assert.Equal(2, handler.Requests.Count);                       // second call: from the cache
        Assert.Empty(Directory.GetFiles(cache.Path, "*.part"));
    }

    [Fact]
    public void A_download_with_the_wrong_hash_is_not_kept()
    {
        using var cache = TestAssets.TempDir();
        var handler = new FakeHandler(u => Upstream(u) is { } b ? [.. b[..^1], (byte)(b[^1] ^ 1)] : null);
        var e = Assert.Throws<ModelNotAvailableException>(() => new ModelStore(cacheDir: cache.Path, handler: handler, useEnvironment: false).GetDefaultModel());
        Assert.Contains("sha256", e.Message);
        Assert.Contains("BEAGLE_MODELS=", e.Message);
        Assert.Empty(Directory.GetFiles(cache.Path));
    }

    [Fact]
    public void Offline_fails_fast_and_says_how_to_provide_the_files()
    {
        using var cache = TestAssets.TempDir();
        // Port 9 (discard) on loopback is closed: the connection is refused at once, like an offline machine.
        var store = new ModelStore(cacheDir: cache.Path, baseUrl: "http://127.0.0.1:9/", timeout: TimeSpan.FromSeconds(5), useEnvironment: false);
        var e = Assert.Throws<ModelNotAvailableException>(() => store.GetDefaultModel());
        // Failing fast means failing on the refused connection, not waiting out the timeout (TaskCanceledException).
        Assert.IsType<HttpRequestException>(e.InnerException);
        Assert.Contains("BEAGLE_MODELS=<folder with stories260K.bin and tok512.bin>", e.Message);
        Assert.Contains("beagle download", e.Message);
        Assert.Contains("--target", e.Message);
        Assert.Contains("--tokenizer", e.Message);
        Assert.Empty(Directory.GetFiles(cache.Path));
    }

    [Fact]
    public async Task An_offline_download_leaves_no_empty_cache_folder_behind()
    {
        using var root = TestAssets.TempDir();
        var cacheDir = Path.Combine(root.Path, "beagle", "models", "stories260K");   // none of these exist yet
        var store = new ModelStore(cacheDir: cacheDir, baseUrl: "http://127.0.0.1:9/", timeout: TimeSpan.FromSeconds(5), useEnvironment: false);

        await Assert.ThrowsAsync<ModelNotAvailableException>(() => store.DownloadDefaultModelAsync());
        Assert.Empty(Directory.GetFileSystemEntries(root.Path));   // beagle/models/stories260K all removed again
        Assert.Throws<ModelNotAvailableException>(() => store.GetDefaultModel());
        Assert.Empty(Directory.GetFileSystemEntries(root.Path));

        // A folder that was there before is the user's: kept, even when empty.
        Directory.CreateDirectory(cacheDir);
        await Assert.ThrowsAsync<ModelNotAvailableException>(() => store.DownloadDefaultModelAsync());
        Assert.True(Directory.Exists(cacheDir));
    }
}
