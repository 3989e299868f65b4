using Beagle.Cli.Commands;
using Spectre.Console.Cli;

var app = new CommandApp();
app.Configure(c =>
{
    c.SetApplicationName("beagle");
    c.AddCommand<GenerateCommand>("generate").WithDescription("Generate text with a target model (optionally speculative with --draft).")
        .WithExample("generate", "--prompt", "\"Once upon a time\"", "--max-tokens", "64");
    c.AddCommand<BenchCommand>("bench").WithDescription("Benchmark plain decoding against drafts on the same prompts (tokens/s, speedup, acceptance length, memory).")
        .WithExample("bench", "--draft", "models/stories260K/beagle", "--draft", "models/stories260K/eagle2", "--runs", "3");
});
return await app.RunAsync(args);
