using System.ComponentModel;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

/// <summary>Options shared by every command that loads a target model.</summary>
public class ModelSettings : CommandSettings
{
    [CommandOption("--target <PATH>")]
    [Description("llama2.c checkpoint (.bin), Hugging Face model folder, or a known model: stories5M (the default, bundled) or stories260K (from $BEAGLE_MODELS or the user cache, see `beagle download`).")]
    public string? Target { get; init; }

    [CommandOption("--tokenizer <PATH>")]
    [Description("Tokenizer file (llama2.c .bin, tokenizer.json or tokenizer.model). Default: found next to the target.")]
    public string? Tokenizer { get; init; }

    [CommandOption("--threads <N>")]
    [Description("libtorch intra-op threads. Default 1: fastest for small models on this kind of CPU (see README benchmarks).")]
    public int Threads { get; init; } = 1;

    [CommandOption("--device <DEVICE>")]
    [Description("auto (CUDA when available), cpu or cuda[[:N]].")]   // [[ ]]: help text is Spectre markup
    public string Device { get; init; } = "auto";

    public override ValidationResult Validate()
    {
        if (Threads < 1) return ValidationResult.Error("--threads must be >= 1");
        if (Target is not null && !Runtime.DefaultModels.IsKnownName(Target) && !File.Exists(Target) && !Directory.Exists(Target)) return ValidationResult.Error($"--target: no file or folder at '{Target}'");
        if (Tokenizer is not null && !File.Exists(Tokenizer)) return ValidationResult.Error($"--tokenizer: no file at '{Tokenizer}'");
        return ValidationResult.Success();
    }
}

/// <summary>Commands that can time a random-weight model of a real shape instead of a target (benchmarks).</summary>
public class ShapeOrModelSettings : ModelSettings
{
    [CommandOption("--random-shape <NAME>")]
    [Description("Use a random-weight model of a real shape instead of --target: llama-110m or llama-135m.")]
    public string? RandomShape { get; init; }
}
