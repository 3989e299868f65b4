using System.ComponentModel;
using Beagle.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

public sealed class DownloadSettings : CommandSettings
{
    [CommandOption("--dir <DIR>")]
    [Description("Where to put the files. Default: the user cache ($XDG_CACHE_HOME or ~/.cache)/beagle/models/stories260K, where every command looks when BEAGLE_MODELS is unset.")]
    public string? Dir { get; init; }

    [CommandOption("--url <BASE>")]
    [Description("Base address to download from, e.g. a mirror of huggingface.co/karpathy/tinyllamas (files at <BASE>stories260K/...). Default: " + ModelStore.DefaultBaseUrl)]
    public string? Url { get; init; }

    [CommandOption("--force")]
    [Description("Download again even when the files are already there.")]
    public bool Force { get; init; }

    public override ValidationResult Validate() =>
        Url is null || Uri.TryCreate(Url.EndsWith('/') ? Url : Url + "/", UriKind.Absolute, out _) ? ValidationResult.Success() : ValidationResult.Error($"--url: not an absolute address: '{Url}'");
}

/// <summary>
/// <c>beagle download</c>: puts the default model (stories260K + tok512, sha256-checked) into the cache, or says how to
/// place the files by hand on a machine without internet.
/// </summary>
public sealed class DownloadCommand : AsyncCommand<DownloadSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, DownloadSettings s, CancellationToken cancellationToken)
    {
        var store = new ModelStore(cacheDir: s.Dir is null ? null : Path.GetFullPath(s.Dir),
            baseUrl: s.Url is null ? null : s.Url.EndsWith('/') ? s.Url : s.Url + "/");
        (string Model, string Tokenizer) paths;
        try
        {
            paths = await CliConsole.Error.Progress()   // progress is status: stderr
                .AutoClear(false)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn())
                .StartAsync(async ctx =>
                {
                    var tasks = ModelStore.Stories260K.ToDictionary(f => f.Name, f => ctx.AddTask(f.Name, autoStart: false).IsIndeterminate());
                    var progress = new Immediate<DownloadProgress>(p =>
                    {
                        var t = tasks[p.File];
                        if (!t.IsStarted) t.StartTask();
                        if (p.TotalBytes is { } total) { t.IsIndeterminate = false; t.MaxValue = total; }
                        t.Value = p.BytesReceived;
                        if (p.TotalBytes == p.BytesReceived) t.StopTask();
                    });
                    return await store.DownloadDefaultModelAsync(s.Force, progress, cancellationToken);
                });
        }
        catch (ModelNotAvailableException e)
        {
            var err = CliErrors.Stderr;
            err.MarkupLine($"[red]{Markup.Escape(e.Message)}[/]");
            err.MarkupLine("[yellow]To place the files by hand[/] (e.g. copied from a machine with internet), put into one folder:");
            foreach (var f in ModelStore.Stories260K)
                err.MarkupLine($"  {f.Name}  [grey]from[/] {Markup.Escape(store.UrlOf(f).ToString())}  [grey]sha256[/] {f.Sha256}");
            err.MarkupLine($"and set [bold]{ModelStore.EnvironmentVariable}[/] to that folder, or use {Markup.Escape(store.CacheDir)} itself.");
            return ExitCodes.ModelNotAvailable;
        }
        AnsiConsole.MarkupLine($"[green]ok[/] {Markup.Escape(paths.Model)}");
        AnsiConsole.MarkupLine($"[green]ok[/] {Markup.Escape(paths.Tokenizer)}");
        if (s.Dir is not null && Path.GetFullPath(s.Dir) != Path.GetFullPath(ModelStore.DefaultCacheDir()))
            AnsiConsole.MarkupLine($"Use it with [bold]{ModelStore.EnvironmentVariable}={Markup.Escape(store.CacheDir)}[/].");
        else if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable(ModelStore.EnvironmentVariable)))
            CliConsole.Note($"{ModelStore.EnvironmentVariable} is set, so commands use that folder instead of the cache.");
        return ExitCodes.Ok;
    }

    /// <summary>An IProgress that reports on the caller's thread (Progress&lt;T&gt; would post to the thread pool, out of order).</summary>
    sealed class Immediate<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
