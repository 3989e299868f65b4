using System.ComponentModel;
using System.Text.Json;
using Beagle.Decoding;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

public sealed class GenerateSettings : DraftSettings
{
    [CommandOption("-p|--prompt <TEXT>")]
    [Description("The prompt. Default: empty (the model starts from BOS).")]
    public string Prompt { get; init; } = "";

    [CommandOption("-n|--max-tokens <N>")]
    [Description("Maximum new tokens (default 256).")]
    public int MaxTokens { get; init; } = 256;

    [CommandOption("-t|--temperature <T>")]
    [Description("0 = greedy (default); > 0 samples.")]
    public float Temperature { get; init; }

    [CommandOption("--top-k <K>")]
    [Description("Sample among the K most likely tokens (0 = off).")]
    public int TopK { get; init; }

    [CommandOption("--top-p <P>")]
    [Description("Nucleus sampling mass in (0, 1]] (1 = off).")]
    public float TopP { get; init; } = 1f;

    [CommandOption("--seed <S>")]
    [Description("Seed for sampling (default: random).")]
    public int? Seed { get; init; }

    [CommandOption("--stop <TEXT>")]
    [Description("Stop string (repeatable).")]
    public string[] Stop { get; init; } = [];

    [CommandOption("--json")]
    [Description("Print one JSON object instead of text.")]
    public bool Json { get; init; }

    public override ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        if (MaxTokens < 0) return ValidationResult.Error("--max-tokens must be >= 0");
        if (!(Temperature >= 0)) return ValidationResult.Error("--temperature must be >= 0");
        if (TopK < 0) return ValidationResult.Error("--top-k must be >= 0");
        if (!(TopP > 0 && TopP <= 1)) return ValidationResult.Error("--top-p must be in (0, 1]");
        return ValidationResult.Success();
    }
}

/// <summary>
/// <c>beagle generate</c>: standard output gets the prompt and its completion, and nothing else (with --json: exactly
/// one JSON document). The prompt is written together with the first piece of the completion, so a failed request
/// leaves standard output empty. Status (draft, calibration, the summary line) goes to standard error.
/// </summary>
public sealed class GenerateCommand : Command<GenerateSettings>
{
    public override int Execute(CommandContext context, GenerateSettings s, CancellationToken cancellationToken)
    {
        var sampling = new SamplingOptions { Temperature = s.Temperature, TopK = s.TopK, TopP = s.TopP, Seed = s.Seed };
        // The --tree-* options are the generator's budget (over the calibrated one); the request leaves it open.
        var (models, gen, draftPath) = CliDrafts.Load(s, sampling, cancellationToken);
        using var _ = models;
        var draft = models.Draft;
        var options = new GenerationOptions
        {
            MaxNewTokens = s.MaxTokens,
            Sampling = sampling,
            StopStrings = s.Stop,
            Speculative = draft is null ? null : new SpeculativeOptions(),
        };
        var stats = new GenerationStats();
        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        bool echoed = false;
        // Generate validates the request (prompt length, vocabulary) before it returns: nothing is printed for a bad one.
        foreach (var chunk in gen.Generate(s.Prompt, options, stats, cancellationToken))
        {
            ids.AddRange(chunk.TokenIds);
            text.Append(chunk.Text);
            if (s.Json) continue;
            if (!echoed) { Console.Write(s.Prompt); echoed = true; }
            Console.Write(chunk.Text);
        }
        var decoding = CliDrafts.DecodingSummary(gen, stats, sampling, s.ExplicitBudget);
        if (s.Json)
        {
            var o = new Dictionary<string, object?>
            {
                ["prompt"] = s.Prompt,
                ["text"] = text.ToString(),
                ["prompt_tokens"] = stats.PromptTokens,
                ["new_tokens"] = stats.NewTokens,
                ["token_ids"] = ids,
                ["tokens_per_second"] = Math.Round(stats.TokensPerSecond, 1),
                ["target_forwards"] = stats.TargetForwards,
                ["finish_reason"] = stats.FinishReason.ToString(),
                ["decoding"] = decoding,
            };
            if (draft is not null)
            {
                o["draft"] = draftPath;
                o["speculative"] = stats.DraftRounds > 0;
                if (stats.DraftRounds > 0)
                {
                    o["acceptance_length"] = Math.Round(stats.AcceptanceLength, 3);
                    o["acceptance_by_depth"] = stats.AcceptanceRateByDepth.Select(x => Math.Round(x, 3)).ToArray();
                    o["draft_ms"] = Math.Round(stats.DraftSeconds * 1000, 1);
                    o["verify_ms"] = Math.Round(stats.VerifySeconds * 1000, 1);
                }
            }
            Console.WriteLine(JsonSerializer.Serialize(o, new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
        }
        else
        {
            if (!echoed) Console.Write(s.Prompt);
            Console.WriteLine();
            Console.Out.Flush();
            CliConsole.Status($"{stats.NewTokens} tokens, {stats.TokensPerSecond:F0} tokens/s, {stats.TargetForwards} target forwards, {decoding}");
        }
        return 0;
    }
}
