using System.Reflection;
using Beagle.Cli;
using Beagle.Cli.Commands;
using Spectre.Console;
using Spectre.Console.Cli;

// Ctrl+C cancels the token every command receives (the decode loop checks it once per round); a second Ctrl+C kills.
using var cts = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) =>
{
    if (cts.IsCancellationRequested) return;   // second press: let the runtime terminate the process
    e.Cancel = true;
    cts.Cancel();
};

// SIGTERM (a service manager, `kill`, a container stop) is the same request as a first Ctrl+C: cancel, let the command
// finish cleanly (training checkpoints); a second SIGTERM terminates at once.
using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, c =>
{
    if (cts.IsCancellationRequested) return;
    c.Cancel = true;
    cts.Cancel();
});

// Standard output is the product (text, JSON, tables); status goes to standard error (CliConsole).
AnsiConsole.Console = CliConsole.Out;
var app = new CommandApp();
app.Configure(c =>
{
    c.ConfigureConsole(CliConsole.Out);
    c.SetApplicationName("beagle");
    c.SetApplicationVersion(typeof(ExitCodes).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown");
    c.CancellationExitCode(ExitCodes.Cancelled);
    c.UseStrictParsing();   // a mistyped option is an error (exit 2), not silently ignored
    c.SetExceptionHandler((e, _) => CliErrors.Handle(e, cts.IsCancellationRequested));
#if DEBUG
    c.ValidateExamples();
#endif
    c.AddCommand<GenerateCommand>("generate").WithDescription("Generate text with a target model (optionally speculative with --draft).")
        .WithExample("generate", "--prompt", "\"Once upon a time\"", "--max-tokens", "64")
        .WithExample("generate", "--target", "./Llama-3.2-1B", "--prompt", "\"The capital of France is\"", "--json")
        .WithExample("generate", "-p", "\"Lily\"", "--temperature", "0.8", "--top-p", "0.9", "--seed", "7");
    c.AddCommand<DownloadCommand>("download").WithDescription("Download stories260K (--target stories260K; sha256-checked) into the user cache, or explain how to place it offline. The default model, stories5M, is bundled.")
        .WithExample("download")
        .WithExample("download", "--dir", "./models", "--force");
    c.AddCommand<ReportCommand>("report").WithDescription("Write report.md and PNG charts (tokens/s, speedup, acceptance by depth) from a saved bench result JSON.")
        .WithExample("report", "bench.json", "--out", "./report");
    c.AddCommand<BenchPlainCommand>("bench-plain").WithDescription("Plain decoding tokens/s (greedy, or sampled with --temperature) at several thread counts (a target, or a random-weight model of a real shape).")
        .WithExample("bench-plain", "--random-shape", "llama-110m", "--thread-counts", "1,2");
    c.AddCommand<BenchCostsCommand>("bench-costs").WithDescription("What a plain step, a verification of T tokens and a draft step cost here, and the acceptance length each chain needs to pay (random weights suffice).")
        .WithExample("bench-costs", "--random-shape", "llama-110m", "--draft-vocab", "8000");
    c.AddCommand<BenchCommand>("bench").WithDescription("Benchmark plain decoding against drafts on the same prompts (tokens/s, speedup, acceptance length, memory).")
        .WithExample("bench", "--draft", "models/stories260K/beagle", "--draft", "models/stories260K/eagle2", "--runs", "3", "--report", "docs/bench");
    c.AddCommand<BenchBatchCommand>("bench-batch").WithDescription("Aggregate tokens/s of concurrent requests batched through one engine against the same requests one at a time (and their outputs compared).")
        .WithExample("bench-batch", "--concurrency", "2,4,8", "--runs", "3");
    c.AddCommand<TrainCommand>("train").WithDescription("Train a Beagle or EAGLE-2 draft for a target (Ctrl+C checkpoints; --resume continues).")
        .WithExample("train", "--data", "stories.txt", "--arch", "beagle", "--out", "runs/beagle", "--epochs", "10");
    c.AddCommand<TrainBenchCommand>("train-bench").WithDescription("Training step time and memory by simulated steps: Beagle stage 2 vs EAGLE-2 training-time test.")
        .WithExample("train-bench", "--sim-steps", "1,2,3,4", "--json", "train-bench.json");
    c.AddCommand<TrainBenchWorkerCommand>("train-bench-worker").IsHidden();
    c.AddCommand<ServeCommand>("serve").WithDescription("Serve the model over an OpenAI-compatible HTTP API (chat and text completions, streaming, health, Prometheus metrics); loopback by default.")
        .WithExample("serve")
        .WithExample("serve", "--target", "stories260K", "--port", "8000", "--api-key", "secret");
    c.AddCommand<LoadTestCommand>("load-test").WithDescription("Bounded load test of the server over loopback: latency percentiles, tokens/s, errors and memory at several concurrency levels.")
        .WithExample("load-test", "--requests", "400", "--concurrency", "1,4,8")
        .WithExample("load-test", "--url", "http://127.0.0.1:8080", "--requests", "100", "--json");
    c.AddCommand<EvalDraftCommand>("eval-draft").WithDescription("Acceptance length of a trained draft with the real tree decoder on held-out text.")
        .WithExample("eval-draft", "--draft", "models/stories260K/beagle", "--data", "heldout.txt");
});
return await app.RunAsync(args, cts.Token);
