using Beagle.Cli.Commands;
using Spectre.Console.Cli;

var app = new CommandApp();
app.Configure(c =>
{
    c.SetApplicationName("beagle");
    c.AddCommand<GenerateCommand>("generate").WithDescription("Generate text with a target model (optionally speculative with --draft).")
        .WithExample("generate", "--prompt", "\"Once upon a time\"", "--max-tokens", "64");
});
return await app.RunAsync(args);
