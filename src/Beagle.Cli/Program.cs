using Beagle.Cli.Commands;
using Spectre.Console.Cli;

var app = new CommandApp();
app.Configure(c =>
{
    c.SetApplicationName("beagle");
    if (Environment.GetEnvironmentVariable("BEAGLE_DEBUG") == "1") c.PropagateExceptions();   // full stack traces
    c.AddCommand<GenerateCommand>("generate").WithDescription("Generate text with a target model (optionally speculative with --draft).")
        .WithExample("generate", "--prompt", "\"Once upon a time\"", "--max-tokens", "64");
    c.AddCommand<TrainCommand>("train").WithDescription("Train a Beagle or EAGLE-2 draft for a target (Ctrl+C checkpoints; --resume continues).")
        .WithExample("train", "--data", "stories.txt", "--arch", "beagle", "--out", "runs/beagle", "--epochs", "10");
    c.AddCommand<TrainBenchCommand>("train-bench").WithDescription("Training step time and memory by simulated steps: Beagle stage 2 vs EAGLE-2 training-time test.")
        .WithExample("train-bench", "--sim-steps", "1,2,3,4", "--json", "train-bench.json");
    c.AddCommand<TrainBenchWorkerCommand>("train-bench-worker").IsHidden();
    c.AddCommand<EvalDraftCommand>("eval-draft").WithDescription("Acceptance length of a trained draft with the real tree decoder on held-out text.")
        .WithExample("eval-draft", "--draft", "models/stories260K/beagle", "--data", "heldout.txt");
});
return await app.RunAsync(args);
