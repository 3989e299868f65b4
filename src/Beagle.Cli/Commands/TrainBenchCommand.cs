using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using Beagle.Drafting;
using Beagle.Training;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

public sealed class TrainBenchSettings : ModelSettings
{
    [CommandOption("--data <FILE>")]
    [Description("Training text (accepted for symmetry with `train`; the benchmark's cost does not depend on token values, so it uses random tokens of the given shape).")]
    public string? Data { get; init; }

    [CommandOption("--sim-steps <LIST>")]
    [Description("Comma-separated simulated steps s (Beagle stage 2) / unrolled steps (EAGLE-2 TTT). Default 1,2,3,4.")]
    public string SimSteps { get; init; } = "1,2,3,4";

    [CommandOption("--batch <B>")]
    [Description("Sequences per step (default 16).")]
    public int Batch { get; init; } = 16;

    [CommandOption("--seq-len <L>")]
    [Description("Tokens per sequence (default 512).")]
    public int SeqLen { get; init; } = 512;

    [CommandOption("--steps <N>")]
    [Description("Optimiser steps per setting; the first is a warm-up and is not timed (default 4).")]
    public int Steps { get; init; } = 4;

    [CommandOption("--full-backprop")]
    [Description("Beagle: back-propagate through all simulated steps instead of detaching them.")]
    public bool FullBackprop { get; init; }

    [CommandOption("--allocator-defaults")]
    [Description("Keep glibc's dynamic mmap threshold in the workers. Default: fix MALLOC_MMAP_THRESHOLD_=65536 so that resident memory follows live tensors instead of blocks the allocator retains.")]
    public bool AllocatorDefaults { get; init; }

    [CommandOption("--json <FILE>")]
    [Description("Also write {runs: [[...]]} to FILE.")]
    public string? Json { get; init; }

    public int[] ParsedSimSteps() => SimSteps.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToArray();

    public override ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        if (Data is not null && !File.Exists(Data)) return ValidationResult.Error($"--data: file not found: {Data}");
        int[] s;
        try { s = ParsedSimSteps(); }
        catch (FormatException) { return ValidationResult.Error($"--sim-steps: expected a comma-separated list of integers, got '{SimSteps}'"); }
        if (s.Length == 0 || s.Any(x => x < 1)) return ValidationResult.Error("--sim-steps: give one or more integers >= 1");
        if (Batch < 1) return ValidationResult.Error("--batch must be >= 1");
        if (SeqLen < 8) return ValidationResult.Error("--seq-len must be >= 8");
        if (Steps < 2) return ValidationResult.Error("--steps must be >= 2 (one warm-up step, then timed steps)");
        return ValidationResult.Success();
    }
}

/// <summary>
/// <c>beagle train-bench</c>: training step time and memory of Beagle stage 2 and EAGLE-2 with a training-time test,
/// for each number of simulated steps. Every setting runs in a fresh process (this executable, re-invoked with the
/// hidden <c>train-bench-worker</c> command), so no measurement inherits another's heap.
/// </summary>
public sealed class TrainBenchCommand : Command<TrainBenchSettings>
{
    public override int Execute(CommandContext context, TrainBenchSettings s, CancellationToken cancellationToken)
    {
        var (target, tokenizer) = CliModels.ResolvePaths(s);
        var runs = new List<JsonObject>();
        var table = new Table().AddColumns("arch", "s", "step ms", "tokens/s", "peak MB", "step MB");
        foreach (var arch in new[] { DraftConfig.Beagle, DraftConfig.Eagle2 })
            foreach (var steps in s.ParsedSimSteps())
            {
                cancellationToken.ThrowIfCancellationRequested();
                string name = arch == DraftConfig.Beagle ? "beagle" : "eagle2-ttt";
                AnsiConsole.MarkupLineInterpolated($"[grey]{name} s={steps}: running in a fresh process...[/]");
                var args = new List<string>
                {
                    "train-bench-worker", "--target", target, "--threads", s.Threads.ToString(CultureInfo.InvariantCulture),
                    "--device", s.Device, "--arch", arch, "--sim-steps", steps.ToString(CultureInfo.InvariantCulture),
                    "--batch", s.Batch.ToString(CultureInfo.InvariantCulture), "--seq-len", s.SeqLen.ToString(CultureInfo.InvariantCulture),
                    "--steps", s.Steps.ToString(CultureInfo.InvariantCulture),
                };
                if (tokenizer is not null) args.AddRange(["--tokenizer", tokenizer]);
                if (s.FullBackprop) args.Add("--full-backprop");
                var r = RunWorker(args, s.AllocatorDefaults ? null : FixedMmapThreshold, cancellationToken);
                var o = new JsonObject
                {
                    ["arch"] = name, ["sim_steps"] = steps, ["step_ms"] = Math.Round(r.StepMs, 1), ["tokens_per_second"] = Math.Round(r.TokensPerSecond, 0),
                    ["peak_memory_mb"] = Math.Round(r.PeakMemoryMb, 1), ["step_memory_mb"] = Math.Round(r.StepMemoryMb, 1),
                    ["baseline_memory_mb"] = Math.Round(r.BaselineMemoryMb, 1), ["batch"] = s.Batch, ["seq_len"] = s.SeqLen,
                    ["full_backprop"] = arch == DraftConfig.Beagle && s.FullBackprop, ["peak_reset"] = r.PeakReset,
                    ["malloc_mmap_threshold"] = s.AllocatorDefaults ? null : FixedMmapThreshold,
                };
                runs.Add(o);
                table.AddRow(name, steps.ToString(CultureInfo.InvariantCulture), r.StepMs.ToString("F1", CultureInfo.InvariantCulture),
                    r.TokensPerSecond.ToString("F0", CultureInfo.InvariantCulture), r.PeakMemoryMb.ToString("F1", CultureInfo.InvariantCulture),
                    r.StepMemoryMb.ToString("F1", CultureInfo.InvariantCulture));
            }
        AnsiConsole.Write(table);
        if (s.Json is { } path)
        {
            var doc = new JsonObject { ["runs"] = new JsonArray(runs.Select(r => (JsonNode)r).ToArray()) };
            var dir = Path.GetDirectoryName(Path.GetFullPath(path));
            if (dir is not null) Directory.CreateDirectory(dir);
            File.WriteAllText(path, doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            AnsiConsole.MarkupLineInterpolated($"[grey]wrote {path}[/]");
        }
        return 0;
    }

    /// <summary>
    /// glibc's MALLOC_MMAP_THRESHOLD_ for the workers: blocks of 64 KiB or more are mmapped and unmapped on free. With the
    /// default dynamic threshold, freeing a large block raises the threshold, later blocks come from the heap and are
    /// kept after free, and the peak resident set then depends on allocation order (Beagle s=1 to 4: +5 to +29 % with
    /// the same live tensors; see docs/training.md).
    /// </summary>
    const string FixedMmapThreshold = "65536";

    /// <summary>Runs this executable again with <paramref name="args"/> and parses the JSON line the worker prints last.</summary>
    static TrainBenchResult RunWorker(IReadOnlyList<string> args, string? mmapThreshold, CancellationToken ct)
    {
        var psi = new ProcessStartInfo(Environment.ProcessPath ?? throw new InvalidOperationException("cannot locate the current executable"))
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        // Run as `dotnet beagle.dll ...`: the process is the dotnet host, so the entry assembly is the first argument.
        var exe = Path.GetFileNameWithoutExtension(psi.FileName);
        if (exe.Equals("dotnet", StringComparison.OrdinalIgnoreCase) && Assembly.GetEntryAssembly()?.Location is { Length: > 0 } dll)
            psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (mmapThreshold is not null) psi.Environment["MALLOC_MMAP_THRESHOLD_"] = mmapThreshold;
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {psi.FileName}");
        using var reg = ct.Register(() => { try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { } });
        var stderr = p.StandardError.ReadToEndAsync(ct);
        var stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        ct.ThrowIfCancellationRequested();
        var line = stdout.Split('\n').Select(l => l.Trim()).LastOrDefault(l => l.StartsWith('{'));
        if (p.ExitCode != 0 || line is null)
            throw new InvalidOperationException($"train-bench worker failed (exit {p.ExitCode}): {stderr.Result.Trim()} {stdout.Trim()}");
        return TrainBenchResult.FromJson(line);
    }
}

public sealed class TrainBenchWorkerSettings : ModelSettings
{
    [CommandOption("--arch <ARCH>")] public string Arch { get; init; } = DraftConfig.Beagle;
    [CommandOption("--sim-steps <S>")] public int SimSteps { get; init; } = 1;
    [CommandOption("--batch <B>")] public int Batch { get; init; } = 16;
    [CommandOption("--seq-len <L>")] public int SeqLen { get; init; } = 512;
    [CommandOption("--steps <N>")] public int Steps { get; init; } = 4;
    [CommandOption("--full-backprop")] public bool FullBackprop { get; init; }
}

/// <summary>Hidden: one <see cref="TrainBench.RunOne"/> setting, printed as one JSON line (run by <see cref="TrainBenchCommand"/>).</summary>
public sealed class TrainBenchWorkerCommand : Command<TrainBenchWorkerSettings>
{
    public override int Execute(CommandContext context, TrainBenchWorkerSettings s, CancellationToken cancellationToken)
    {
        var (model, tokenizer) = CliModels.LoadTarget(s);
        using var _ = model;
        var r = TrainBench.RunOne(model, tokenizer, new Beagle.Training.TrainBenchSettings(s.Arch, s.SimSteps, s.Batch, s.SeqLen, s.Steps, FullBackprop: s.FullBackprop));
        Console.WriteLine(r.ToJson());
        return 0;
    }
}
