using System.Net;
using Beagle.Runtime;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Runtime;

/// <summary><see cref="ModelStore.DownloadDefaultModelAsync"/> (what `beagle download` runs), served by a fake handler.</summary>
public class ModelStoreDownloadTests
{
    sealed class Upstream : HttpMessageHandler
    {
        public int Requests;
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Requests);
            var p = request.RequestUri!.AbsolutePath;
            var file = p.EndsWith("/stories260K/stories260K.bin") ? TestAssets.ModelPath : p.EndsWith("/stories260K/tok512.bin") ? TestAssets.TokenizerPath : null;
            return Task.FromResult(file is null
                ? new HttpResponseMessage(HttpStatusCode.NotFound)
                : new HttpResponseMessage(HttpStatusCode.OK) { Content = new ByteArrayContent(File.ReadAllBytes(file)) });
        }
    }

    sealed class Collect : IProgress<DownloadProgress>
    {
        public List<DownloadProgress> Reports { get; } = [];
        public void Report(DownloadProgress value) => Reports.Add(value);
    }

    [Fact]
    public async Task Download_fills_the_cache_even_when_a_models_folder_is_set_and_reports_bytes()
    {
        using var cache = TestAssets.TempDir();
        var upstream = new Upstream();
        var progress = new Collect();
        var store = new ModelStore(modelsDir: Path.GetDirectoryName(TestAssets.ModelPath), cacheDir: cache.Path, handler: upstream);

        var (model, tok) = await store.DownloadDefaultModelAsync(progress: progress);

        Assert.Equal(Path.Combine(cache.Path, "stories260K.bin"), model);
        Assert.Equal(File.ReadAllBytes(TestAssets.ModelPath), File.ReadAllBytes(model));
        Assert.Equal(File.ReadAllBytes(TestAssets.TokenizerPath), File.ReadAllBytes(tok));
        long size = new FileInfo(TestAssets.ModelPath).Length;
        var modelReports = progress.Reports.Where(r => r.File == "stories260K.bin").ToList();
        Assert.Equal(0, modelReports[0].BytesReceived);
        Assert.Equal(new DownloadProgress("stories260K.bin", size, size), modelReports[^1]);
        Assert.True(modelReports.Select(r => r.BytesReceived).SequenceEqual(modelReports.Select(r => r.BytesReceived).Order()));
    }

    [Fact]
    public async Task Files_already_in_the_cache_are_kept_unless_forced()
    {
        using var cache = TestAssets.TempDir();
        var upstream = new Upstream();
        var store = new ModelStore(cacheDir: cache.Path, handler: upstream);
        await store.DownloadDefaultModelAsync();
        Assert.Equal(2, upstream.Requests);
        await store.DownloadDefaultModelAsync();
        Assert.Equal(2, upstream.Requests);
        await store.DownloadDefaultModelAsync(force: true);
        Assert.Equal(4, upstream.Requests);
        Assert.Empty(Directory.GetFiles(cache.Path, "*.part"));
    }
}
