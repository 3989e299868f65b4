using Beagle.Cli;
using Beagle.Runtime;
using Spectre.Console.Cli;
using Xunit;

namespace Beagle.Tests.Cli;

/// <summary>The exit codes of docs/cli.md, as the global exception handler assigns them.</summary>
public class CliErrorsTests
{
    static int Run(params string[] args)
    {
        var app = new CommandApp();
        app.Configure(c =>
        {
            c.UseStrictParsing();
            c.SetExceptionHandler((e, _) => CliErrors.Classify(e, cancelled: false));
            c.ConfigureConsole(Spectre.Console.AnsiConsole.Create(new Spectre.Console.AnsiConsoleSettings { Out = new Spectre.Console.AnsiConsoleOutput(TextWriter.Null) }));
            c.AddCommand<Beagle.Cli.Commands.DownloadCommand>("download");
            c.AddCommand<Beagle.Cli.Commands.GenerateCommand>("generate");
            c.AddCommand<Beagle.Cli.Commands.ReportCommand>("report");
            c.AddCommand<Beagle.Cli.Commands.BenchPlainCommand>("bench-plain");
            c.AddCommand<Beagle.Cli.Commands.BenchCostsCommand>("bench-costs");
            c.AddCommand<Beagle.Cli.Commands.BenchCommand>("bench");
            c.AddCommand<Beagle.Cli.Commands.TrainCommand>("train");
            c.AddCommand<Beagle.Cli.Commands.TrainBenchCommand>("train-bench");
            c.AddCommand<Beagle.Cli.Commands.EvalDraftCommand>("eval-draft");
        });
        return app.Run(args);
    }

    [Fact]
    public void Unknown_commands_and_options_and_bad_values_are_usage_errors()
    {
        Assert.Equal(ExitCodes.Usage, Run("nosuch"));
        Assert.Equal(ExitCodes.Usage, Run("download", "--bogus"));
        Assert.Equal(ExitCodes.Usage, Run("download", "--url", "not a url"));
        Assert.Equal(ExitCodes.Usage, Run("bench-plain", "--temperature", "0.8", "--top-p", "0"));
        Assert.Equal(ExitCodes.Usage, Run("bench-plain", "--temperature", "-1"));
    }

    [Theory]
    [InlineData("generate")]
    [InlineData("download")]
    [InlineData("report")]
    [InlineData("bench-plain")]
    [InlineData("bench-costs")]
    [InlineData("bench")]
    [InlineData("train")]
    [InlineData("train-bench")]
    [InlineData("eval-draft")]
    public void Help_renders_for_every_command(string command)
    {
        // Option descriptions are Spectre markup: a stray "[" or "]" (e.g. "(0, 1]") breaks -h at run time.
        Assert.Equal(ExitCodes.Ok, Run(command, "--help"));
    }

    [Fact]
    public void Each_failure_maps_to_its_documented_code()
    {
        Assert.Equal(3, CliErrors.Classify(new ModelNotAvailableException("x"), cancelled: false));
        Assert.Equal(130, CliErrors.Classify(new OperationCanceledException(), cancelled: true));
        // A cancellation nobody asked for (e.g. an HTTP timeout) is a runtime error, not Ctrl+C.
        Assert.Equal(1, CliErrors.Classify(new TaskCanceledException(), cancelled: false));
        Assert.Equal(1, CliErrors.Classify(new InvalidDataException("bad checkpoint"), cancelled: false));
        Assert.Equal(1, CliErrors.Classify(new FileNotFoundException("gone"), cancelled: false));
    }

    [Fact]
    public void Error_lines_are_product_sentences_without_parameter_names()
    {
        var e = new ArgumentException("the prompt has 900 tokens but the model's context is 512; shorten it to at most 511 tokens", "promptIds");
        Assert.Contains("(Parameter 'promptIds')", e.Message);   // what .NET appends, and what a user must not see
        Assert.Equal("the prompt has 900 tokens but the model's context is 512; shorten it to at most 511 tokens", CliErrors.OneLine(e));

        var range = new ArgumentOutOfRangeException("promptIds", 9999, "token id 9999 is outside the vocabulary (size 512)");
        Assert.Equal("token id 9999 is outside the vocabulary (size 512)", CliErrors.OneLine(range));

        // The innermost cause is added, trimmed the same way.
        var wrapped = new InvalidDataException("TargetPath 'x.bin': unreadable", new ArgumentException("bad header", "stream"));
        Assert.Equal("TargetPath 'x.bin': unreadable (bad header)", CliErrors.OneLine(wrapped));
    }
}

/// <summary>Prompt-lookup settings without --ngram would do nothing: they are refused, naming the missing option.</summary>
public class NGramSettingsTests
{
    [Fact]
    public void Ngram_settings_without_ngram_are_refused_and_with_it_validated()
    {
        var alone = new Beagle.Cli.Commands.GenerateSettings { NGramMax = 4 }.Validate();
        Assert.False(alone.Successful);
        Assert.Contains("add --ngram", alone.Message);
        var benchAlone = new Beagle.Cli.Commands.BenchSettings { NGramMin = 2 }.Validate();
        Assert.False(benchAlone.Successful);
        Assert.Contains("--ngram-min", benchAlone.Message);

        Assert.True(new Beagle.Cli.Commands.GenerateSettings { NGram = true, NGramMax = 4, NGramMin = 2 }.Validate().Successful);
        var inverted = new Beagle.Cli.Commands.GenerateSettings { NGram = true, NGramMax = 2, NGramMin = 3 }.Validate();
        Assert.False(inverted.Successful);
        Assert.Contains("--ngram-min", inverted.Message);
    }
}
