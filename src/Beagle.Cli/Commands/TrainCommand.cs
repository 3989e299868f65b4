using System.Collections.Concurrent;
using System.ComponentModel;
using Beagle.Training;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Beagle.Cli.Commands;

public sealed class TrainSettings : ModelSettings
{
    [CommandOption("--data <FILE>")]
    [Description("Training text: .txt (blank-line separated documents), .jsonl or chat .jsonl. Repeatable.")]
    public string[] Data { get; init; } = [];

    [CommandOption("--generate <N>")]
    [Description("Also train on N sequences sampled from the target itself (default 0).")]
    public int Generate { get; init; }

    [CommandOption("--generate-tokens <N>")]
    [Description("New tokens per generated sequence (default 256).")]
    public int GenerateTokens { get; init; } = 256;

    [CommandOption("--generate-temperature <T>")]
    [Description("Sampling temperature of the generated sequences (default 1; 0 = greedy).")]
    public float GenerateTemperature { get; init; } = 1f;

    [CommandOption("--generate-prompt-tokens <P>")]
    [Description("Generated sequences continue the first P tokens of the --data documents (distinct prompts) instead of starting from BOS: the target regenerates the data (default 0 = from BOS).")]
    public int GeneratePromptTokens { get; init; }

    [CommandOption("--generate-prompt-stride <S>")]
    [Description("With --generate-prompt-tokens P: also cut prompts at P+S, P+2S, ... tokens into each document (default 0 = starts only).")]
    public int GeneratePromptStride { get; init; }

    [CommandOption("--feature-cache <DIR>")]
    [Description("Where target features and generated sequences are cached (default <out>/features); runs that share it share the work.")]
    public string? FeatureCache { get; init; }

    [CommandOption("--arch <ARCH>")]
    [Description("beagle (two-stage block-attention training, default) or eagle2 (the baseline).")]
    public string Arch { get; init; } = "beagle";

    [CommandOption("-o|--out <DIR>")]
    [Description("Run folder: checkpoint/, metrics.jsonl, plots/, draft/ (the trained draft).")]
    public string? Out { get; init; }

    [CommandOption("--epochs <E>")]
    [Description("Total epochs (default 10).")]
    public int Epochs { get; init; } = 10;

    [CommandOption("--stage1-epochs <E1>")]
    [Description("Beagle: epochs of stage 1 (default: half of --epochs).")]
    public int? Stage1Epochs { get; init; }

    [CommandOption("--window <K>")]
    [Description("Beagle: block size k of stage 1 and the depth weights (default 5).")]
    public int Window { get; init; } = 5;

    [CommandOption("--sim-steps <S>")]
    [Description("Beagle: simulated drafting steps of stage 2, <= window (default 4).")]
    public int SimSteps { get; init; } = 4;

    [CommandOption("--batch <B>")]
    [Description("Sequences per step (default 16).")]
    public int Batch { get; init; } = 16;

    [CommandOption("--seq-len <L>")]
    [Description("Tokens per training sequence (default 256).")]
    public int SeqLen { get; init; } = 256;

    [CommandOption("--lr <LR>")]
    [Description("Peak learning rate (default 1e-3).")]
    public double Lr { get; init; } = 1e-3;

    [CommandOption("--warmup <N>")]
    [Description("Linear warm-up steps (default 50).")]
    public int Warmup { get; init; } = 50;

    [CommandOption("--decay-epochs <N>")]
    [Description("Decay the learning rate linearly to 0 over the last N epochs (default 0: constant after warm-up). With --resume and more --epochs, anneals a finished run.")]
    public int DecayEpochs { get; init; }

    [CommandOption("--noise <STD>")]
    [Description("Feature noise on the true states (Beagle: Gaussian std; EAGLE-2: uniform width). Default 0.2.")]
    public double Noise { get; init; } = 0.2;

    [CommandOption("--ce-weight <W>")]
    [Description("Soft cross-entropy weight (default 1.0 for beagle, 0.1 for eagle2).")]
    public double? CeWeight { get; init; }

    [CommandOption("--vloss-weight <W>")]
    [Description("SmoothL1 state-regression weight (default 10 for beagle, 1.0 for eagle2).")]
    public double? VLossWeight { get; init; }

    [CommandOption("--draft-vocab <N>")]
    [Description("Reduced draft output vocabulary: the N most frequent tokens of the data (default: full).")]
    public int? DraftVocab { get; init; }

    [CommandOption("--eval <FILE>")]
    [Description("Held-out text for the per-epoch acceptance evaluation (default: the last documents of --data, held out). Repeatable.")]
    public string[] Eval { get; init; } = [];

    [CommandOption("--eval-prompts <N>")]
    [Description("Held-out prompts per evaluation (default 8; 0 = no evaluation).")]
    public int EvalPrompts { get; init; } = 8;

    [CommandOption("--resume")]
    [Description("Continue from <out>/checkpoint (or the copy an interrupted save left aside); refuses to start when there is none.")]
    public bool Resume { get; init; }

    [CommandOption("--checkpoint-every <N>")]
    [Description("Steps between checkpoints (default 500; also at each epoch end and on Ctrl+C). Bounds what a crash or a kill loses.")]
    public int CheckpointEvery { get; init; } = 500;

    [CommandOption("--seed <S>")]
    [Description("Seed for initialisation, data order, window offsets and noise (default 0).")]
    public int Seed { get; init; }

    /// <summary>The trainer's options; their own validation names the option at fault.</summary>
    public TrainingOptions ToOptions(string target, string? tokenizer) => new()
    {
        Architecture = Arch, TargetPath = target, TokenizerPath = tokenizer, DataPaths = Data, Generate = Generate,
        GenerateMaxTokens = GenerateTokens, GenerateTemperature = GenerateTemperature, GeneratePromptTokens = GeneratePromptTokens, GeneratePromptStride = GeneratePromptStride, FeatureCacheDir = FeatureCache, OutputDir = Out ?? "", Epochs = Epochs, Stage1Epochs = Stage1Epochs, WindowK = Window,
        SimSteps = SimSteps, BatchSize = Batch, SeqLen = SeqLen, LearningRate = Lr, WarmupSteps = Warmup, DecayEpochs = DecayEpochs, DraftVocab = DraftVocab,
        NoiseStd = Noise, CeWeight = CeWeight, VLossWeight = VLossWeight,
        EvalPaths = Eval, EvalPrompts = EvalPrompts, Resume = Resume, Seed = Seed, CheckpointEverySteps = CheckpointEvery,
    };

    public override ValidationResult Validate()
    {
        var b = base.Validate();
        if (!b.Successful) return b;
        if (string.IsNullOrWhiteSpace(Out)) return ValidationResult.Error("--out: an output folder is required");
        if (Data.Length == 0 && Generate <= 0) return ValidationResult.Error("--data: give at least one --data FILE or --generate N");
        if (EvalPrompts < 0) return ValidationResult.Error("--eval-prompts must be >= 0");
        try { ToOptions("target", "tokenizer").Validate(); }
        catch (ArgumentException e) { return ValidationResult.Error("--" + e.Message.Replace($" (Parameter '{e.ParamName}')", "")); }   // messages start with the option name
        return ValidationResult.Success();
    }
}

/// <summary>
/// <c>beagle train</c>: trains a Beagle or EAGLE-2 draft for a target with a live progress bar. Ctrl+C saves a
/// checkpoint and exits with code 130; <c>--resume</c> continues exactly where it stopped.
/// </summary>
public sealed class TrainCommand : AsyncCommand<TrainSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, TrainSettings s, CancellationToken cancellationToken)
    {
        // The target is loaded through the composition root (a known model, a llama2.c file or a Hugging Face folder,
        // on --device, with --threads) on the training thread.
        var spec = CliModels.Spec(s);
        var files = CliModels.Resolve(spec, cancellationToken);
        spec = spec with { Target = files.Target, Tokenizer = files.Tokenizer };
        var options = s.ToOptions(files.Target, files.Tokenizer);

        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        // Cancel first and write nothing here: the handler runs on another thread, and writing to the console while
        // the live progress display holds it can block the handler before it cancels (seen under a pty).
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;   // let the trainer finish its step and write the checkpoint
            cts.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            var progress = new LatestProgress();
            TrainingResult result;
            if (AnsiConsole.Profile.Capabilities.Interactive)
            {
                result = await AnsiConsole.Progress()
                    .AutoClear(false)
                    .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .StartAsync(async ctx =>
                    {
                        var task = ctx.AddTask($"{s.Arch}: preparing data and features", maxValue: 1);
                        var run = DraftTrainer.TrainAsync(spec, options, progress, cts.Token);
                        while (!run.IsCompleted)
                        {
                            await Task.WhenAny(run, Task.Delay(250, CancellationToken.None));
                            foreach (var m in progress.DrainMessages()) AnsiConsole.MarkupLineInterpolated($"[grey]{m}[/]");
                            if (cts.IsCancellationRequested) task.Description = "[yellow]stopping: saving a checkpoint...[/]";
                            else if (progress.Latest is { } p && p.TotalSteps > 0)
                            {
                                task.MaxValue = p.TotalSteps;
                                task.Value = p.Step;
                                task.Description = Markup.Escape(Describe(s.Arch, p));
                            }
                        }
                        foreach (var m in progress.DrainMessages()) AnsiConsole.MarkupLineInterpolated($"[grey]{m}[/]");
                        return await run;
                    });
            }
            else
            {
                // Redirected output: one plain line per progress report (a log, not a redrawn bar).
                progress.Echo = line => Console.WriteLine(line);
                progress.Describe = p => Describe(s.Arch, p);
                using var announce = cts.Token.Register(() => Console.Error.WriteLine("stopping: saving a checkpoint..."));
                result = await DraftTrainer.TrainAsync(spec, options, progress, cts.Token);
            }

            if (result.Completed)
            {
                AnsiConsole.MarkupLineInterpolated($"[green]done[/]: {result.Steps} steps, final loss {result.LastLoss:F4}; draft saved to {result.DraftDir}");
                if (result.Epochs.LastOrDefault()?.EvalAcceptanceLength is { } tau)
                    AnsiConsole.MarkupLineInterpolated($"held-out acceptance length {tau:F3}");
                return 0;
            }
            AnsiConsole.MarkupLineInterpolated($"[yellow]stopped at step {result.Steps}[/]; checkpoint saved in {Path.Combine(result.OutputDir, "checkpoint")}.");
            AnsiConsole.MarkupLineInterpolated($"Resume with the same command plus --resume, e.g.: beagle train {string.Join(' ', ResumeArgs(context))}");
            return 130;
        }
        catch (OperationCanceledException)
        {
            AnsiConsole.MarkupLine("[yellow]cancelled before training started[/]; nothing to resume.");
            return 130;
        }
        finally { Console.CancelKeyPress -= onCancel; }
    }

    static IEnumerable<string> ResumeArgs(CommandContext context)
    {
        var args = context.Arguments.Skip(1).ToList();   // drop the command name
        if (!args.Contains("--resume")) args.Add("--resume");
        return args.Select(a => a.Contains(' ') ? $"\"{a}\"" : a);
    }

    static string Describe(string arch, TrainingProgress p)
    {
        var acc = p.AcceptanceByDepth.Length == 0 ? "-" : string.Join(" ", p.AcceptanceByDepth.Select(a => double.IsFinite(a) ? a.ToString("F2") : "-"));
        return $"{arch} ep {p.Epoch}/{p.Epochs} st{p.Stage} step {p.Step}/{p.TotalSteps} loss {p.Loss:F3} acc@d [{acc}] {p.TokensPerSecond:F0} tok/s ETA {p.Eta:hh\\:mm\\:ss}";
    }

    /// <summary>Keeps the latest report for the render loop (the trainer reports from its worker thread) and queues messages.</summary>
    sealed class LatestProgress : IProgress<TrainingProgress>
    {
        readonly ConcurrentQueue<string> _messages = new();
        volatile TrainingProgress? _latest;
        public TrainingProgress? Latest => _latest;
        public Action<string>? Echo { get; set; }
        public Func<TrainingProgress, string>? Describe { get; set; }

        public void Report(TrainingProgress value)
        {
            if (value.Message is { } m)
            {
                if (m.StartsWith("done:", StringComparison.Ordinal) || m.StartsWith("stopped at step", StringComparison.Ordinal)) return;   // the command says it
                if (Echo is { } e) e(m); else _messages.Enqueue(m);
                return;
            }
            _latest = value;
            if (Echo is { } echo && Describe is { } d) echo(d(value));
        }

        public IEnumerable<string> DrainMessages() { while (_messages.TryDequeue(out var m)) yield return m; }
    }
}
