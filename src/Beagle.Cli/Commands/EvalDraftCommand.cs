using System.ComponentModel;
using System.Text.Json;
using Beagle.Drafting;
using Beagle.Runtime;
using Beagle.Training;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

public sealed class EvalDraftSettings : ModelSettings
{
    [CommandOption("--draft <DIR>")]
    [Description("Draft folder (draft.safetensors + draft.json). Default with a known target (stories5M, stories260K): its bundled Beagle draft.")]
    public string? Draft { get; init; }

    [CommandOption("--data <FILE>")]
    [Description("Held-out text; its first --prompts documents longer than --prompt-tokens give the prompts.")]
    public string? Data { get; init; }

    [CommandOption("--prompts <N>")]
    [Description("Number of prompts (default 64).")]
    public int Prompts { get; init; } = 64;

    [CommandOption("--prompt-tokens <N>")]
    [Description("Prompt length in tokens (default 32, as in training's evaluation).")]
    public int PromptTokens { get; init; } = 32;

    [CommandOption("--max-tokens <N>")]
    [Description("New tokens per prompt (default 64).")]
    public int MaxTokens { get; init; } = 64;

    [CommandOption("--tree-tokens <N>")] [Description("Tree budget: nodes including the root (default 16).")] public int TreeTokens { get; init; } = 16;
    [CommandOption("--tree-depth <N>")] [Description("Tree depth (default 5).")] public int TreeDepth { get; init; } = 5;
    [CommandOption("--tree-topk <N>")] [Description("Tree top-k (default 4).")] public int TreeTopK { get; init; } = 4;

    [CommandOption("--json")]
    [Description("Print one JSON object.")]
    public bool Json { get; init; }

    public override ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        if (Draft is null && CliDrafts.BundledDraft(Target) is null)
            return ValidationResult.Error(Target is null || Runtime.DefaultModels.IsKnownName(Target)
                ? $"--draft DIR is required: {Target ?? Runtime.DefaultModels.Default} has no bundled Beagle draft next to the program"
                : "--draft DIR is required: the draft to evaluate (a folder with draft.json and draft.safetensors trained for --target)");
        if (Draft is not null && !File.Exists(Path.Combine(Draft, DraftCheckpoint.WeightsFile))) return ValidationResult.Error($"--draft: no {DraftCheckpoint.WeightsFile} in '{Draft}'");
        if (Data is null) return ValidationResult.Error("--data FILE is required: held-out text (plain text or jsonl) whose documents give the prompts");
        if (!File.Exists(Data)) return ValidationResult.Error($"--data: no file at '{Data}'");
        if (Prompts < 1) return ValidationResult.Error("--prompts must be >= 1");
        if (PromptTokens < 1) return ValidationResult.Error("--prompt-tokens must be >= 1");
        try { new Beagle.Decoding.TreeBudgetOptions { Tokens = TreeTokens, Depth = TreeDepth, TopK = TreeTopK }.Validate(CliModels.BudgetNames); }
        catch (ArgumentException e) { return ValidationResult.Error(CliErrors.ProductMessage(e)); }
        if (MaxTokens < 1) return ValidationResult.Error("--max-tokens must be >= 1");
        return ValidationResult.Success();
    }
}

/// <summary>
/// <c>beagle eval-draft</c>: acceptance length and acceptance rate by depth of a trained draft with the real tree
/// decoder (greedy), on held-out prompts. The same measurement as training's per-epoch evaluation
/// (<see cref="DraftTrainer.Evaluate"/>), with more prompts.
/// </summary>
public sealed class EvalDraftCommand : Command<EvalDraftSettings>
{
    public override int Execute(CommandContext context, EvalDraftSettings s, CancellationToken cancellationToken)
    {
        var (model, tokenizer) = CliModels.LoadTarget(s, cancellationToken);
        using var _ = model;
        var draftPath = s.Draft ?? CliDrafts.BundledDraft(s.Target)!;   // Validate checked that one exists
        if (s.Draft is null) CliConsole.Status($"draft: {draftPath} (bundled)");
        using var draft = ModelLoader.LoadDraft(draftPath, model);
        var prompts = SequencePacker.Tokenize(TextSources.ReadDocuments(s.Data!), tokenizer)
            .Where(d => d.Length > s.PromptTokens).Take(s.Prompts).Select(d => d[..s.PromptTokens]).ToList();
        var options = new TrainingOptions
        {
            Architecture = draft.Architecture, OutputDir = Path.GetTempPath(), Generate = 1,
            EvalMaxNewTokens = s.MaxTokens, EvalTreeTokens = s.TreeTokens, EvalTreeDepth = s.TreeDepth, EvalTreeTopK = s.TreeTopK,
        };
        var (tau, byDepth) = DraftTrainer.Create(model, tokenizer, options).Evaluate(draft, prompts, cancellationToken);
        if (s.Json)
        {
            Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["draft"] = draftPath, ["arch"] = draft.Architecture, ["prompts"] = prompts.Count, ["new_tokens"] = s.MaxTokens,
                ["tree"] = new[] { s.TreeTokens, s.TreeDepth, s.TreeTopK }, ["acceptance_length"] = Math.Round(tau, 4),
                ["acceptance_by_depth"] = byDepth.Select(x => Math.Round(x, 4)).ToArray(),
            }));
        }
        else
            AnsiConsole.MarkupLineInterpolated($"{draft.Architecture}: acceptance length {tau:F3} over {prompts.Count} prompts; by depth {string.Join(" ", byDepth.Select(x => x.ToString("F3")))}");
        return 0;
    }
}
