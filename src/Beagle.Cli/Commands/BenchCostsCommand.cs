using System.ComponentModel;
using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Runtime;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

public sealed class BenchCostsSettings : ShapeOrModelSettings
{
    [CommandOption("--draft <DIR>")]
    [Description("Draft checkpoint folder to time. Default: a random draft of --draft-arch sized for the target.")]
    public string? Draft { get; init; }

    [CommandOption("--draft-arch <ARCH>")]
    [Description("beagle (default) or eagle2: the random draft's architecture when no --draft is given.")]
    public string DraftArch { get; init; } = DraftConfig.Beagle;

    [CommandOption("--draft-vocab <N>")]
    [Description("The random draft's output vocabulary (its first N token ids; default: the target's whole vocabulary).")]
    public int? DraftVocab { get; init; }

    [CommandOption("--tokens <LIST>")]
    [Description("Verified chain lengths to time, root included (default 2,3,4,5,6,9).")]
    public string Tokens { get; init; } = "2,3,4,5,6,9";

    [CommandOption("--context <N>")]
    [Description("Context length at which everything is timed (default 80).")]
    public int Context { get; init; } = 80;

    [CommandOption("--runs <R>")]
    [Description("Interleaved runs; medians are reported (default 7).")]
    public int Runs { get; init; } = 7;

    public override ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        if (Runs < 1 || Context < 1) return ValidationResult.Error("--runs and --context must be >= 1");
        if (Tokens.Split(',').Any(t => !int.TryParse(t, out var n) || n < 2 || n > 64)) return ValidationResult.Error("--tokens must be a list of chain lengths in [2, 64], e.g. 2,4,6");
        if (!DraftArchitectures.TryGet(DraftArch, out _)) return ValidationResult.Error($"--draft-arch must be one of {string.Join(", ", DraftArchitectures.Names)}, got '{DraftArch}'");
        if (DraftVocab is < 2) return ValidationResult.Error("--draft-vocab must be >= 2");
        if (Draft is not null && DraftVocab is not null) return ValidationResult.Error("--draft-vocab applies to the random draft only; a --draft checkpoint has its own vocabulary");
        if (Draft is not null && !Directory.Exists(Draft)) return ValidationResult.Error($"--draft: no folder at '{Draft}'");
        return ValidationResult.Success();
    }
}

/// <summary>
/// <c>beagle bench-costs</c>: what a plain step, a draft step and a whole speculative round over T chained tokens
/// (drafting, verification and bookkeeping) cost for a target and draft on this machine (weights do not matter, so random
/// ones do), and from that the acceptance length each chain needs to break even and to reach 2x. Answers "can
/// speculation pay here?" before training a draft.
/// </summary>
public sealed class BenchCostsCommand : Command<BenchCostsSettings>
{
    public override int Execute(CommandContext context, BenchCostsSettings s, CancellationToken cancellationToken)
    {
        var (model, _, name) = CliModels.LoadShapeOrTarget(s, cancellationToken);
        using var owned = model;
        int vocab = model.Config.VocabSize;
        if (s.DraftVocab > vocab) throw new ArgumentException($"--draft-vocab {s.DraftVocab} exceeds the target's vocabulary ({vocab})");
        using var draft = s.Draft is not null
            ? ModelLoader.LoadDraft(s.Draft, model)
            : DraftCheckpoint.Create(DraftConfig.ForTarget(model.Config, s.DraftArch, s.DraftVocab is int n ? Enumerable.Range(0, n).ToArray() : null), model);
        var tokens = s.Tokens.Split(',').Select(int.Parse).ToArray();
        var costs = CliConsole.WithStatus("timing...", status =>
            SpeculativeCosts.Measure(model, draft, tokens, s.Context, s.Runs, status, cancellationToken));

        string draftName = s.Draft ?? $"random {s.DraftArch}, vocabulary {s.DraftVocab ?? vocab}";
        AnsiConsole.MarkupLine($"[bold]{Markup.Escape(name)}[/], draft {Markup.Escape(draftName)}, context {costs.Context}, {s.Threads} thread(s)");
        AnsiConsole.MarkupLine($"plain step {costs.PlainMs:F3} ms; draft step {costs.DraftStepMs:F3} ms ({costs.DraftStepMs / costs.PlainMs:P0} of a plain step)");
        var table = new Table().AddColumns("chain", "draft ms", "verify ms", "verify/plain", "bookkeeping ms", "round ms", "round/plain = τ to break even", "τ for 2x");
        foreach (var t in tokens.Distinct().OrderBy(t => t))
        {
            double round = costs.RoundInPlainSteps(t);
            table.AddRow(t.ToString(), $"{costs.DraftMs[t]:F3}", $"{costs.VerifyMs[t]:F3}", $"{costs.VerifyMs[t] / costs.PlainMs:F2}", $"{costs.BookkeepingMs[t]:F3}",
                $"{costs.RoundMs(t):F3}", $"{round:F2}", 2 * round > t ? $"{2 * round:F2} (> {t}!)" : $"{2 * round:F2}");
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine("[grey]A round as the engine runs it, every draft token accepted: draft = building the chain (T - 1 draft steps and the tree), " +
            "verify = the target forward, bookkeeping = the target's choices, acceptance, KV compaction and the draft's commit. " +
            "τ: tokens emitted per round (acceptance length). A chain of T tokens emits at most T, so \"(> T!)\" marks a 2x this chain cannot reach. Speedup = τ / (round/plain).[/]");
        return 0;
    }
}
