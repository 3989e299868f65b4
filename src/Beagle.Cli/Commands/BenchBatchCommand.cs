using System.ComponentModel;
using System.Diagnostics;
using Beagle.Decoding;
using Beagle.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

public sealed class BenchBatchSettings : DraftSettings
{
    [CommandOption("--concurrency <LIST>")]
    [Description("Comma-separated numbers of concurrent requests to compare with the same requests one at a time (default 2,4,8).")]
    public string Concurrency { get; init; } = "2,4,8";

    [CommandOption("--prompts <FILE>")]
    [Description("One prompt per line (reused in turn when there are fewer than the largest concurrency). Default: docs/bench/stories-prompts.txt next to the tool.")]
    public string? Prompts { get; init; }

    [CommandOption("-n|--max-tokens <N>")]
    [Description("New tokens per request (default 128).")]
    public int MaxTokens { get; init; } = 128;

    [CommandOption("--workers <N>")]
    [Description("Decoding threads of the engine, each running its own batch (default 1). Both columns use them: one request at a time runs on one worker.")]
    public int Workers { get; init; } = 1;

    [CommandOption("--runs <R>")]
    [Description("Repetitions, interleaved; medians are reported (default 3).")]
    public int Runs { get; init; } = 3;

    public override ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        if (MaxTokens < 1 || Runs < 1) return ValidationResult.Error("--max-tokens and --runs must be >= 1");
        if (Workers < 1 || Workers > 64) return ValidationResult.Error("--workers must be between 1 and 64");
        if (Concurrency.Split(',').Any(t => !int.TryParse(t, out var n) || n < 1 || n > 64)) return ValidationResult.Error("--concurrency must be a list of integers in [1, 64], e.g. 2,4,8");
        if (Prompts is not null && !File.Exists(Prompts)) return ValidationResult.Error($"--prompts: no file at '{Prompts}'");
        return ValidationResult.Success();
    }
}

/// <summary>
/// <c>beagle bench-batch</c>: aggregate tokens/s of N concurrent greedy requests through one <see cref="BeagleEngine"/>
/// (continuous batching) against the same N requests sent one at a time through the same engine, interleaved run by
/// run in one process; also checks that every batched output equals its one-at-a-time output.
/// </summary>
public sealed class BenchBatchCommand : Command<BenchBatchSettings>
{
    public override int Execute(CommandContext context, BenchBatchSettings s, CancellationToken cancellationToken)
    {
        // The engine's own default budget (a chain of 3, or what --tree-* name over it): no calibration, so that runs are comparable.
        var spec = CliModels.DraftSpec(s) with { Calibrate = false };
        var files = CliModels.Resolve(spec, cancellationToken);
        var models = ModelLoader.Load(spec, files);
        var draft = models.Draft;
        var draftPath = CliDrafts.DraftLabel(s, files);
        var levels = s.Concurrency.Split(',').Select(int.Parse).Distinct().Order().ToArray();
        int most = levels[^1];
        var all = SpeculativeBenchmark.LoadPrompts(s.Prompts ?? Path.Combine(AppContext.BaseDirectory, "bench", "stories-prompts.txt"));
        var prompts = Enumerable.Range(0, most).Select(i => all[i % all.Count]).ToArray();
        var options = new GenerationOptions
        {
            MaxNewTokens = s.MaxTokens, Speculative = draft is null ? null : s.TreeBudget.Over(TreeBudget.Default, CliModels.BudgetNames).ToOptions(),
        };
        using var engine = new BeagleEngine(() => models,
            new EngineOptions { Threads = s.Threads, MaxBatchSize = Math.Max(most, s.Workers), QueueCapacity = most, Workers = s.Workers });
        engine.Ready.GetAwaiter().GetResult();

        // Wall time, and the process's CPU time: on a shared machine other processes take the core away for a while, which
        // wall time counts and CPU time does not (the engine decodes on one thread; the readers' and GC's time is counted).
        var process = Process.GetCurrentProcess();
        double Cpu() { process.Refresh(); return process.TotalProcessorTime.TotalSeconds; }
        // One request after another: each prompt's tokens, wall and CPU seconds (through the engine).
        (int[][] Ids, double[] Seconds, double[] CpuSeconds) OneAtATime()
        {
            var ids = new int[most][]; var secs = new double[most]; var cpu = new double[most];
            for (int i = 0; i < most; i++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                double c0 = Cpu();
                long t0 = Stopwatch.GetTimestamp();
                ids[i] = engine.CompleteAsync(prompts[i], options, cancellationToken).GetAwaiter().GetResult().TokenIds;
                secs[i] = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                cpu[i] = Cpu() - c0;
            }
            return (ids, secs, cpu);
        }
        (int[][] Ids, double Seconds, double CpuSeconds) Together(int n)
        {
            cancellationToken.ThrowIfCancellationRequested();
            double c0 = Cpu();
            long t0 = Stopwatch.GetTimestamp();
            var tasks = prompts.Take(n).Select(p => engine.CompleteAsync(p, options, cancellationToken)).ToArray();
            var results = Task.WhenAll(tasks).GetAwaiter().GetResult();
            return (results.Select(r => r.TokenIds).ToArray(), Stopwatch.GetElapsedTime(t0).TotalSeconds, Cpu() - c0);
        }

        // Warm-up, untimed: .NET optimises hot code only after it has run a while.
        var warm = Stopwatch.StartNew();
        do { OneAtATime(); Together(most); } while (warm.Elapsed < SpeculativeBenchmark.DefaultWarmUp);

        var single = levels.ToDictionary(n => n, _ => new List<double>());
        var batched = levels.ToDictionary(n => n, _ => new List<double>());
        var ratios = levels.ToDictionary(n => n, _ => new List<double>());
        var cpuRatios = levels.ToDictionary(n => n, _ => new List<double>());
        bool identical = true;
        int[] lengths = [];
        CliConsole.WithStatus("benchmarking", status =>
        {
            for (int r = 0; r < s.Runs; r++)
            {
                status($"run {r + 1}/{s.Runs}");
                var alone = OneAtATime();
                lengths = alone.Ids.Select(x => x.Length).ToArray();
                foreach (var n in levels)
                {
                    var together = Together(n);
                    for (int i = 0; i < n; i++) identical &= together.Ids[i].AsSpan().SequenceEqual(alone.Ids[i]);
                    int tokens = together.Ids.Sum(x => x.Length);
                    double one = tokens / alone.Seconds.Take(n).Sum(), many = tokens / together.Seconds;
                    single[n].Add(one); batched[n].Add(many); ratios[n].Add(many / one);
                    cpuRatios[n].Add(alone.CpuSeconds.Take(n).Sum() / together.CpuSeconds);
                }
            }
            return 0;
        });

        var table = new Table().AddColumns("concurrent requests", "one at a time (tokens/s)", "batched (aggregate tokens/s)", "ratio", "runs (ratio)", "ratio in CPU time");
        foreach (var n in levels)
            table.AddRow(n.ToString(), $"{SpeculativeBenchmark.Median(single[n]):F0}", $"{SpeculativeBenchmark.Median(batched[n]):F0}",
                $"{SpeculativeBenchmark.Median(ratios[n]):F2}x", string.Join(" ", ratios[n].Select(x => x.ToString("F2"))), $"{SpeculativeBenchmark.Median(cpuRatios[n]):F2}x");
        AnsiConsole.Write(table);
        var method = draft is null ? "plain decoding" : $"draft {draft.Architecture} ({Markup.Escape(draftPath ?? "")})";
        AnsiConsole.MarkupLine($"[grey]{method}; {s.Workers} worker(s) of {s.Threads} thread(s); at most {s.MaxTokens} new tokens per request (got {lengths.Min()}-{lengths.Max()}, mean {lengths.Average():F0}{(lengths.Min() < s.MaxTokens ? ": EOS ended some early" : "")}); greedy; {s.Runs} runs; batched outputs identical to one at a time: {identical}[/]");
        return identical ? 0 : 1;
    }
}
