using Beagle.Runtime;
using System.ComponentModel;
using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Tokenization;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

public sealed class BenchSettings : ModelSettings
{
    [CommandOption("--draft <DIR>")]
    [Description("Draft checkpoint folder; repeat for several drafts. Default with the default model: the bundled Beagle and EAGLE-2 drafts.")]
    public string[] Drafts { get; init; } = [];

    [CommandOption("--draft-model <PATH>")]
    [Description("Adds the row draft-lm: a smaller language model with the target's tokenizer drafting (a llama2.c .bin file, a Hugging Face folder, or a known name such as stories260K).")]
    public string? DraftModel { get; init; }

    [CommandOption("--ngram")]
    [Description("Adds the row ngram: prompt lookup (no model).")]
    public bool NGram { get; init; }

    [CommandOption("--ngram-max <N>")] [Description("With --ngram: the longest suffix looked up, 1-16 (default 3).")] public int? NGramMax { get; init; }
    [CommandOption("--ngram-min <N>")] [Description("With --ngram: the shortest suffix looked up (default 1).")] public int? NGramMin { get; init; }

    [CommandOption("--prompts <FILE>")]
    [Description("One prompt per line, or Spec-Bench / MT-bench jsonl (first turn). Default: docs/bench/stories-prompts.txt next to the tool.")]
    public string? Prompts { get; init; }

    [CommandOption("-n|--max-tokens <N>")]
    [Description("New tokens per prompt (default 128).")]
    public int MaxTokens { get; init; } = 128;

    [CommandOption("--runs <R>")]
    [Description("Repetitions; medians are reported (default 3).")]
    public int Runs { get; init; } = 3;

    [CommandOption("--warmup <SECONDS>")]
    [Description("Untimed decoding by every method before the measured runs (default 2): .NET optimises hot code only after it has run a while.")]
    public double WarmUp { get; init; } = 2;

    [CommandOption("--tree-tokens <N>")] [Description("Tokens verified per round for every draft, root included (2-256). Default: measured per draft; each --tree-* option named overrides only its part of the measured budget.")] public int? TreeTokens { get; init; }
    [CommandOption("--tree-depth <D>")] [Description("Tree depth (1-32). Default: measured.")] public int? TreeDepth { get; init; }
    [CommandOption("--tree-topk <K>")] [Description("Tree top-k (1-64). Default: measured.")] public int? TreeTopK { get; init; }
    [CommandOption("--tree-min-prob <P>")] [Description("Confidence floor, 0 <= P < 1 (0 = off). Default: measured.")] public double? TreeMinProb { get; init; }

    /// <summary>The --tree-* options as one budget (named fields override the measured budget).</summary>
    public TreeBudgetOptions TreeBudget => new() { Tokens = TreeTokens, Depth = TreeDepth, TopK = TreeTopK, MinProb = TreeMinProb };

    [CommandOption("-t|--temperature <T>")] [Description("0 = greedy (default); > 0 benchmarks sampled decoding (outputs then differ by chance, not compared).")] public float Temperature { get; init; }
    [CommandOption("--top-k <K>")] [Description("Sample among the K most likely tokens (default 0: off).")] public int TopK { get; init; }
    [CommandOption("--top-p <P>")] [Description("Nucleus sampling mass, 0 < P <= 1 (default 1: off).")] public float TopP { get; init; } = 1f;
    [CommandOption("--seed <S>")] [Description("Sampling seed of every generation (default 1).")] public int Seed { get; init; } = 1;

    [CommandOption("--json <FILE>")]
    [Description("Write the results as JSON.")]
    public string? Json { get; init; }

    [CommandOption("--report <DIR>")]
    [Description("Write report.md and PNG charts (tokens/s, speedup, acceptance by depth) into DIR.")]
    public string? Report { get; init; }

    public override ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        foreach (var d in Drafts) if (!Directory.Exists(d)) return ValidationResult.Error($"--draft: no folder at '{d}'");
        if (DraftModel is not null && !DefaultModels.IsKnownName(DraftModel) && !File.Exists(DraftModel) && !Directory.Exists(DraftModel))
            return ValidationResult.Error($"--draft-model: no file or folder at '{DraftModel}'");
        if (DraftSettings.NGramOptionsError(NGram, NGramMax, NGramMin) is { } ng) return ValidationResult.Error(ng);
        if (Prompts is not null && !File.Exists(Prompts)) return ValidationResult.Error($"--prompts: no file at '{Prompts}'");
        if (MaxTokens < 1) return ValidationResult.Error("--max-tokens must be >= 1");
        if (Runs < 1) return ValidationResult.Error("--runs must be >= 1");
        if (!(WarmUp >= 0 && WarmUp <= 3600)) return ValidationResult.Error("--warmup must be between 0 and 3600 seconds");
        try { TreeBudget.Validate(CliModels.BudgetNames); }
        catch (ArgumentException e) { return ValidationResult.Error(CliErrors.ProductMessage(e)); }
        try { Sampling.Validate(); } catch (ArgumentException e) { return ValidationResult.Error(e.Message); }
        return ValidationResult.Success();
    }

    /// <summary>The sampling setting every method decodes with (greedy by default).</summary>
    public SamplingOptions Sampling => new() { Temperature = Temperature, TopK = TopK, TopP = TopP, Seed = Seed };
}

/// <summary><c>beagle bench</c>: plain decoding and each draft, interleaved on the same prompts in one process.</summary>
public sealed class BenchCommand : Command<BenchSettings>
{
    public override int Execute(CommandContext context, BenchSettings s, CancellationToken cancellationToken)
    {
        var (model, tokenizer) = CliModels.LoadTarget(s, cancellationToken);
        using var _ = model;
        var draftPaths = s.Drafts.Length > 0 ? s.Drafts
            : new[] { CliDrafts.BundledDraft(s.Target, "beagle"), CliDrafts.BundledDraft(s.Target, "eagle2") }.OfType<string>().ToArray();
        if (draftPaths.Length == 0)
            CliConsole.Note(s.Target is null || DefaultModels.IsKnownName(s.Target)
                ? $"{s.Target ?? DefaultModels.Default} has no bundled drafts next to the program: benchmarking plain decoding only (pass --draft DIR to compare a draft)"
                : "no --draft given: benchmarking plain decoding only (pass --draft DIR, repeatable, to compare drafts)");
        var promptsPath = s.Prompts ?? Path.Combine(AppContext.BaseDirectory, "bench", "stories-prompts.txt");
        var prompts = SpeculativeBenchmark.LoadPrompts(promptsPath);
        // Chat targets get each prompt as a user turn in their own template (Spec-Bench / MT-bench are chat prompts);
        // base models such as stories5M (plain template) continue the raw text.
        var (kind, why) = s.Target is null || DefaultModels.IsKnownName(s.Target) ? (ChatTemplateKind.Plain, "story model") : ChatTemplates.Detect(s.Target);
        if (kind != ChatTemplateKind.Plain)
        {
            prompts = prompts.Select(p => ChatTemplates.Render(kind, [new ChatTurn(ChatTurnRole.User, p)]).Text).ToList();
            CliConsole.Status($"prompts rendered with the {kind} chat template ({why})");
        }

        var methods = new List<BenchMethod> { new("plain", null, null, null) };
        var drafts = new List<IDraftModel>();
        try
        {
            void Add(IDraftModel d, string name, string path)
            {
                drafts.Add(d);
                // What --tree-* names is used as given; the rest is measured per draft (sampled decoding with its own
                // setting: acceptance under sampling differs from greedy). A benchmark reports the draft at that budget,
                // even where calibration prefers plain decoding.
                var (budget, _) = ModelLoader.TreeBudgetFor(model, tokenizer, d, s.TreeBudget, calibrate: true, sampling: s.Sampling,
                    log: m => CliConsole.Status($"{name}: {m}"), budgetNames: CliModels.BudgetNames);
                methods.Add(new BenchMethod(name, path, d, budget.ToOptions()));
            }
            foreach (var path in draftPaths)
            {
                var d = ModelLoader.LoadDraft(path, model);
                Add(d, d.Architecture, DisplayPath(path));
            }
            // The drafts that need no training, each its own row, built by the rule every face uses.
            if (s.DraftModel is not null)
                Add(TrainingFreeDrafts.Create(s.DraftModel, ngram: false, model, tokenizer)!, "draft-lm",
                    DefaultModels.IsKnownName(s.DraftModel) ? s.DraftModel : DisplayPath(s.DraftModel));
            if (s.NGram)
            {
                var ngram = CliDrafts.NGramOptions(s.NGramMax, s.NGramMin);
                Add(TrainingFreeDrafts.Create(null, ngram: true, model, tokenizer, ngram)!, "ngram", NGramLabel(ngram));
            }

            // Progress and truncation notes on stderr; the table below is the product.
            var result = CliConsole.WithStatus("benchmarking", status =>
                SpeculativeBenchmark.Run(model, tokenizer, methods, prompts, s.MaxTokens, s.Runs, s.Sampling, progress: status, cancellationToken: cancellationToken,
                    warmUp: TimeSpan.FromSeconds(s.WarmUp), warn: CliConsole.Note));

            var table = new Table().AddColumns("method", "tree", "tokens/s", "speedup", "acceptance length",
                result.PeakMemoryPerMethod ? "peak memory (MB)" : "process peak (MB)", "draft memory");
            foreach (var m in result.Methods)
                table.AddRow(m.Name, m.Tree ?? "-", $"{m.TokensPerSecond:F0}", $"{m.Speedup:F2}x", $"{m.AcceptanceLength:F2}", $"{m.PeakMemoryMb:F0}",
                    Reporting.BenchReport.Bytes(m.DraftBytes));
            AnsiConsole.Write(table);
            AnsiConsole.MarkupLine($"[grey]{Markup.Escape(result.Machine)}; {result.Threads} thread(s); {result.Prompts} prompts x {result.Runs} runs; {result.MaxNewTokens} new tokens each{Truncated(result)}; {(s.Sampling.IsGreedy ? $"greedy outputs identical: {result.GreedyOutputsIdentical}" : $"sampled ({result.Sampling})")}[/]");
            if (s.Json is not null) File.WriteAllText(s.Json, result.ToJson());
            if (s.Report is not null)
            {
                Directory.CreateDirectory(s.Report);
                File.WriteAllText(Path.Combine(s.Report, "bench.json"), result.ToJson());
                foreach (var f in Reporting.BenchReport.Write(result, s.Report)) CliConsole.Status($"wrote {f}");
            }
            return result.GreedyOutputsIdentical ? 0 : 1;
        }
        finally { foreach (var d in drafts) d.Dispose(); }
    }

    static string Truncated(BenchResult r) => r.TruncatedPrompts == 0 ? "" : $" ({r.TruncatedPrompts} prompt{(r.TruncatedPrompts == 1 ? "" : "s")} cut from the left to fit the context)";

    /// <summary>A path as a reader of the report wants it: the bundled drafts by their repository name, others relative when below the working folder.</summary>
    static string NGramLabel(Beagle.Drafting.NGram.NGramOptions o) => $"n-gram {o.MinNgram}-{o.MaxNgram}";

    static string DisplayPath(string path)
    {
        var full = Path.GetFullPath(path);
        var bundled = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "models"));
        if (full.StartsWith(bundled, StringComparison.Ordinal)) return "models" + full[bundled.Length..] + " (bundled)";
        var rel = Path.GetRelativePath(Environment.CurrentDirectory, full);
        return rel.StartsWith("..", StringComparison.Ordinal) ? full : rel;
    }
}
