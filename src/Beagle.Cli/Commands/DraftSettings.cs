using Beagle.Runtime;
using System.ComponentModel;
using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tokenization;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

/// <summary>Target options plus the speculative-decoding options of generate.</summary>
public class DraftSettings : ModelSettings
{
    [CommandOption("--draft <DIR>")]
    [Description("Draft checkpoint folder (draft.json + draft.safetensors). Default with the default model: the bundled Beagle draft.")]
    public string? Draft { get; init; }

    [CommandOption("--no-draft")]
    [Description("Decode plainly, without a draft.")]
    public bool NoDraft { get; init; }

    [CommandOption("--tree-tokens <N>")]
    [Description("Tokens verified per round, root included (2-256). Default: measured for this machine (cached).")]
    public int? TreeTokens { get; init; }

    [CommandOption("--tree-depth <D>")]
    [Description("Draft steps per round (1-32). Default: measured.")]
    public int? TreeDepth { get; init; }

    [CommandOption("--tree-topk <K>")]
    [Description("Children per expanded node (1-64; 1 = a chain). Default: measured.")]
    public int? TreeTopK { get; init; }

    [CommandOption("--tree-min-prob <P>")]
    [Description("Confidence floor (0 <= P < 1): draft nodes less likely than P under the draft are not verified, so rounds stop early where the draft is unsure (0 = off). Default: measured.")]
    public double? TreeMinProb { get; init; }

    public override ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        if (Draft is not null && !Directory.Exists(Draft)) return ValidationResult.Error($"--draft: no folder at '{Draft}'");
        if (Draft is not null && NoDraft) return ValidationResult.Error("--draft and --no-draft exclude each other");
        try { TreeBudget.Validate(CliModels.BudgetNames); }
        catch (ArgumentException e) { return ValidationResult.Error(CliErrors.ProductMessage(e)); }
        return ValidationResult.Success();
    }

    /// <summary>The --tree-* options as one budget: what they name overrides the calibrated budget, the rest is measured.</summary>
    public TreeBudgetOptions TreeBudget => new() { Tokens = TreeTokens, Depth = TreeDepth, TopK = TreeTopK, MinProb = TreeMinProb };
    public bool ExplicitBudget => !TreeBudget.IsEmpty;
}

internal static class CliDrafts
{
    /// <summary>
    /// The draft bundled for the target the user named: the default model's (no --target) or a known model's
    /// (--target stories5M / stories260K); none for a target given by path.
    /// </summary>
    public static string? BundledDraft(string? target, string arch = "beagle")
    {
        if (target is not null && !DefaultModels.IsKnownName(target)) return null;
        return DefaultModels.BundledDraft(target ?? DefaultModels.Default, arch);
    }

    /// <summary>
    /// Target, tokenizer and draft of a decoding command, and a generator with the tree budget applied (calibrated for
    /// what the --tree-* options leave open; its messages go to stderr). The caller owns the models.
    /// </summary>
    /// <param name="sampling">The request's sampling settings: sampled decoding is calibrated with exactly these (acceptance
    /// under sampling depends on them), greedy decoding once per machine/model/draft.</param>
    public static (EngineModels Models, Generator Generator, string? DraftPath) Load(DraftSettings s, SamplingOptions? sampling = null, CancellationToken cancellationToken = default)
    {
        var spec = CliModels.DraftSpec(s);
        var files = CliModels.Resolve(spec, cancellationToken);
        var models = ModelLoader.Load(spec, files);
        try { return (models, ModelLoader.CreateGenerator(models, spec, sampling, CliConsole.Status, CliModels.BudgetNames), files.Draft); }
        catch { models.Dispose(); throw; }
    }

    /// <summary>
    /// How a finished generation was decoded, for the summary line: plainly (no draft, or calibration found that the
    /// draft does not pay here), speculatively with its acceptance length, or not at all (no decoding round ran, e.g.
    /// --max-tokens 0): an acceptance length is only reported when a draft round ran.
    /// </summary>
    public static string DecodingSummary(Generator gen, GenerationStats stats, SamplingOptions sampling, bool explicitBudget)
    {
        if (gen.Draft is not { } draft) return "plain decoding";
        if (stats.DraftRounds > 0) return $"draft {draft.Architecture}, acceptance length {stats.AcceptanceLength:F2}";
        if (stats.NewTokens == 0) return "nothing decoded";
        bool pays = explicitBudget || (sampling.IsGreedy ? gen.SpeculationPays : gen.SamplingSpeculationPays);
        return pays ? $"no speculative round ran (draft {draft.Architecture})"
            : $"plain decoding (the {draft.Architecture} draft does not pay for these settings here: measured)";
    }
}
