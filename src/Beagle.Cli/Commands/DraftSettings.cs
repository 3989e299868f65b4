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

    [CommandOption("--draft-model <PATH>")]
    [Description("A smaller language model with the target's tokenizer drafts instead (no training): a llama2.c .bin file, a Hugging Face folder, or a known name (stories260K).")]
    public string? DraftModel { get; init; }

    [CommandOption("--ngram")]
    [Description("Prompt lookup drafts instead (no model): proposes what followed the latest earlier occurrence of the text's last tokens. Pays where the output copies the prompt.")]
    public bool NGram { get; init; }

    [CommandOption("--ngram-max <N>")]
    [Description("With --ngram: the longest suffix looked up, 1-16 (default 3).")]
    public int? NGramMax { get; init; }

    [CommandOption("--ngram-min <N>")]
    [Description("With --ngram: the shortest suffix looked up, 1 to --ngram-max (default 1).")]
    public int? NGramMin { get; init; }

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
        int chosen = (Draft is not null ? 1 : 0) + (DraftModel is not null ? 1 : 0) + (NGram ? 1 : 0) + (NoDraft ? 1 : 0);
        if (chosen > 1) return ValidationResult.Error("choose one of --draft, --draft-model, --ngram and --no-draft");
        if (DraftModel is not null && !DefaultModels.IsKnownName(DraftModel) && !File.Exists(DraftModel) && !Directory.Exists(DraftModel))
            return ValidationResult.Error($"--draft-model: no file or folder at '{DraftModel}'");
        if (NGramOptionsError(NGram, NGramMax, NGramMin) is { } ng) return ValidationResult.Error(ng);
        try { TreeBudget.Validate(CliModels.BudgetNames); }
        catch (ArgumentException e) { return ValidationResult.Error(CliErrors.ProductMessage(e)); }
        return ValidationResult.Success();
    }

    /// <summary>Why --ngram-max / --ngram-min are invalid, or null. They are settings of --ngram: alone they would do nothing.</summary>
    internal static string? NGramOptionsError(bool ngram, int? max, int? min)
    {
        if (!ngram && (max is not null || min is not null)) return $"{(max is not null ? "--ngram-max" : "--ngram-min")} sets up prompt lookup: add --ngram";
        var o = CliDrafts.NGramOptions(max, min);
        if (o.MaxNgram is < 1 or > 16) return "--ngram-max must be in [1, 16]";
        if (o.MinNgram < 1 || o.MinNgram > o.MaxNgram) return "--ngram-min must be in [1, --ngram-max]";
        return null;
    }

    /// <summary>The --tree-* options as one budget: what they name overrides the calibrated budget, the rest is measured.</summary>
    public TreeBudgetOptions TreeBudget => new() { Tokens = TreeTokens, Depth = TreeDepth, TopK = TreeTopK, MinProb = TreeMinProb };
    public bool ExplicitBudget => !TreeBudget.IsEmpty;
}

internal static class CliDrafts
{
    /// <summary>The prompt-lookup settings: what the options name, the library's defaults for the rest.</summary>
    internal static Beagle.Drafting.NGram.NGramOptions NGramOptions(int? max, int? min)
    {
        var o = new Beagle.Drafting.NGram.NGramOptions();
        return o with { MaxNgram = max ?? o.MaxNgram, MinNgram = min ?? o.MinNgram };
    }

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
        try { return (models, ModelLoader.CreateGenerator(models, spec, sampling, CliConsole.Status, CliModels.BudgetNames), DraftLabel(s, files)); }
        catch { models.Dispose(); throw; }
    }

    /// <summary>What drafts for a command, for its messages: the draft folder, the draft model, "ngram", or null (plain).</summary>
    public static string? DraftLabel(DraftSettings s, ResolvedModel files) => files.Draft ?? s.DraftModel ?? (s.NGram ? "ngram" : null);

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
