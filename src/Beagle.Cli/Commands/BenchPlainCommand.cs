using System.ComponentModel;
using System.Diagnostics;
using Beagle.Decoding;
using Beagle.Tokenization;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

public sealed class BenchPlainSettings : ShapeOrModelSettings
{
    [CommandOption("--thread-counts <LIST>")]
    [Description("Comma-separated thread counts to compare (default 1,2).")]
    public string ThreadCounts { get; init; } = "1,2";

    [CommandOption("-n|--max-tokens <N>")]
    [Description("Tokens generated per run (default 128).")]
    public int MaxTokens { get; init; } = 128;

    [CommandOption("--runs <R>")]
    [Description("Runs per thread count, interleaved; the median is reported (default 5).")]
    public int Runs { get; init; } = 5;

    [CommandOption("-t|--temperature <T>")] [Description("0 = greedy (default); > 0 measures sampled decoding (the sampler's cost included).")] public float Temperature { get; init; }
    [CommandOption("--top-k <K>")] [Description("Sample among the K most likely tokens (default 0: off).")] public int TopK { get; init; }
    [CommandOption("--top-p <P>")] [Description("Nucleus sampling mass, 0 < P <= 1 (default 1: off).")] public float TopP { get; init; } = 1f;
    [CommandOption("--seed <S>")] [Description("Sampling seed of every run (default 1).")] public int Seed { get; init; } = 1;

    /// <summary>The sampling setting every run decodes with (greedy by default).</summary>
    public SamplingOptions Sampling => new() { Temperature = Temperature, TopK = TopK, TopP = TopP, Seed = Seed };

    public override ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        if (MaxTokens < 1 || Runs < 1) return ValidationResult.Error("--max-tokens and --runs must be >= 1");
        if (ThreadCounts.Split(',').Any(t => !int.TryParse(t, out var n) || n < 1)) return ValidationResult.Error("--thread-counts must be a list of positive integers, e.g. 1,2");
        try { Sampling.Validate(); } catch (ArgumentException e) { return ValidationResult.Error(e.Message); }
        return ValidationResult.Success();
    }
}

/// <summary>
/// <c>beagle bench-plain</c>: plain decoding tokens/s (greedy, or sampled with --temperature) of one target at several thread counts, interleaved run by
/// run (the thread count is a process-wide libtorch setting, switched between runs). Picks the thread count by measurement.
/// </summary>
public sealed class BenchPlainCommand : Command<BenchPlainSettings>
{
    public override int Execute(CommandContext context, BenchPlainSettings s, CancellationToken cancellationToken)
    {
        var (model, tokenizer, name) = CliModels.LoadShapeOrTarget(s, cancellationToken);
        using var _ = model;
        var threads = s.ThreadCounts.Split(',').Select(int.Parse).ToArray();
        var gen = new Generator(model, tokenizer ?? new NullTokenizer(model.Config.VocabSize));
        int[] prompt = [model.Config.BosId];
        var o = new GenerationOptions { MaxNewTokens = s.MaxTokens, Sampling = s.Sampling };
        var runs = threads.ToDictionary(t => t, _ => new List<double>());
        TorchSharp.torch.set_num_threads(threads[0]);
        // Warm-up, untimed, every thread count: .NET optimises hot code only after it has run for a while (one 16-token
        // generation left the first runs of stories260K 20-40 % slow and the medians noisy, as in `bench`).
        var warm = Stopwatch.StartNew();
        do
            foreach (var t in threads)
            {
                cancellationToken.ThrowIfCancellationRequested();
                TorchSharp.torch.set_num_threads(t);
                foreach (var __ in gen.Generate(prompt, o, null, cancellationToken)) { }
            }
        while (warm.Elapsed < SpeculativeBenchmark.DefaultWarmUp);
        for (int r = 0; r < s.Runs; r++)
            foreach (var t in threads)
            {
                cancellationToken.ThrowIfCancellationRequested();
                TorchSharp.torch.set_num_threads(t);
                var stats = new GenerationStats();
                long t0 = Stopwatch.GetTimestamp();
                foreach (var __ in gen.Generate(prompt, o, stats, cancellationToken)) { }
                runs[t].Add(stats.NewTokens / Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
        var table = new Table().AddColumns("model", "threads", "tokens/s (median)", "runs");
        foreach (var t in threads)
            table.AddRow(Markup.Escape(name), t.ToString(), $"{SpeculativeBenchmark.Median(runs[t]):F1}", string.Join(" ", runs[t].Select(x => x.ToString("F0"))));
        AnsiConsole.Write(table);
        return 0;
    }

    /// <summary>Random-weight models have no tokenizer; generation needs only ids (text is not shown).</summary>
    sealed class NullTokenizer(int vocab) : ITokenizer
    {
        public int VocabSize => vocab;
        public int BosId => 1;
        public int[] Encode(string text, bool addBos) => [1];
        public ReadOnlySpan<byte> TokenBytes(int token, int previous) => [];
        public bool IsSpecial(int token) => false;
    }
}
