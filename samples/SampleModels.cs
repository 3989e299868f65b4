using Beagle.Runtime;
using Beagle.SemanticKernel;

namespace Beagle.Samples;

/// <summary>The model a sample runs: resolved paths and the name to show.</summary>
internal sealed record SampleModel(string Target, string? Tokenizer, string? Draft);

/// <summary>
/// Command-line handling shared by the samples. With no --target they run the product's default model, stories5M
/// (bundled next to every program), with its bundled Beagle draft when there is one; no environment variable needed.
/// </summary>
internal static class SampleModels
{
    /// <summary>
    /// The target, tokenizer and draft to use: --target PATH (or a known name: stories5M, stories260K), else the default
    /// model; a known model's bundled Beagle draft unless --draft or --no-draft says otherwise. A known model without a
    /// bundled draft decodes plainly, and says so once on stderr.
    /// </summary>
    /// <exception cref="ModelNotAvailableException">A known model's files are missing (the message says what to do).</exception>
    public static SampleModel Resolve(string? target, string? tokenizer, string? draft, bool noDraft)
    {
        // The product's composition root resolves names, files and the bundled draft, as for every other face.
        var files = ModelLoader.Resolve(new ModelSpec { Target = target ?? DefaultModels.Default, Tokenizer = tokenizer, Draft = draft, NoDraft = noDraft });
        if (files.BundledDraftMissing)
            Console.Error.WriteLine($"note: {files.KnownName} has no bundled Beagle draft next to the program yet: decoding plainly (pass --draft DIR to speculate)");
        return new(files.Target, files.Tokenizer, files.Draft);
    }

    /// <summary>
    /// Parses the Chat and Agent samples' arguments (--target, --tokenizer, --draft, --no-draft, --template,
    /// --max-tokens, --prompt). On a bad argument or model: one line on stderr and false.
    /// </summary>
    public static bool TryParse(string[] args, out BeagleModelOptions options, out string? prompt)
    {
        options = null!; prompt = null;
        try
        {
            string? target = null, tokenizer = null, draft = null, template = null;
            int maxTokens = 128;
            bool noDraft = false;
            for (int i = 0; i < args.Length; i++)
            {
                string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
                switch (args[i])
                {
                    case "--target": target = Next(); break;
                    case "--tokenizer": tokenizer = Next(); break;
                    case "--draft": draft = Next(); break;
                    case "--no-draft": noDraft = true; break;
                    case "--prompt": prompt = Next(); break;
                    case "--template": template = Next(); break;
                    case "--max-tokens":
                        var n = Next();
                        maxTokens = int.TryParse(n, System.Globalization.CultureInfo.InvariantCulture, out var m) && m >= 1 ? m
                            : throw new ArgumentException($"--max-tokens must be a whole number >= 1, got '{n}'");
                        break;
                    default: throw new ArgumentException($"unknown argument '{args[i]}' (use --target, --tokenizer, --draft, --no-draft, --template, --max-tokens, --prompt)");
                }
            }
            var model = Resolve(target, tokenizer, draft, noDraft);
            options = new BeagleModelOptions
            {
                TargetPath = model.Target, TokenizerPath = model.Tokenizer, DraftPath = model.Draft, ChatTemplate = template,
                Threads = 1, Device = "auto", DefaultMaxTokens = maxTokens,
            };
            var problems = options.Problems(checkFiles: true);
            if (problems.Count > 0) throw new ArgumentException(string.Join("; ", problems));
            return true;
        }
        catch (Exception e) when (e is ArgumentException or ModelNotAvailableException)
        {
            Console.Error.WriteLine($"error: {Describe(e)}");
            return false;
        }
    }

    /// <summary>One line on stderr for a failure, and the exit code 1: a sample's user needs the reason, not a stack trace.</summary>
    public static int Fail(Exception e)
    {
        Console.Out.Flush();
        Console.Error.WriteLine($"error: {Describe(e)}");
        return 1;
    }

    /// <summary>The message and, when it adds something, the innermost cause; never ".NET's (Parameter 'x')".</summary>
    public static string Describe(Exception e)
    {
        if (e is AggregateException { InnerExceptions.Count: 1 } a) e = a.InnerExceptions[0];
        var msg = Sentence(e);
        var inner = e.InnerException;
        while (inner?.InnerException is not null) inner = inner.InnerException;
        if (inner is not null && Sentence(inner) is var cause && !msg.Contains(cause, StringComparison.Ordinal)) msg += $" ({cause})";
        return msg.ReplaceLineEndings(" ");

        static string Sentence(Exception x) =>
            x is ArgumentException { ParamName: { Length: > 0 } p } && x.Message.IndexOf($" (Parameter '{p}')", StringComparison.Ordinal) is var i and > 0
                ? x.Message[..i] : x.Message;
    }

    /// <summary>One line of statistics from a response's AdditionalProperties / Metadata.</summary>
    public static string Stats(IReadOnlyDictionary<string, object?>? props, long? outputTokens) =>
        props is null ? "" : string.Format(System.Globalization.CultureInfo.InvariantCulture,
            "[{0} tokens, {1:F1} tok/s, acceptance length {2:F2}, speculative {3}, {4}]",
            outputTokens, props.GetValueOrDefault(BeagleChatClient.TokensPerSecondKey), props.GetValueOrDefault(BeagleChatClient.AcceptanceLengthKey),
            props.GetValueOrDefault(BeagleChatClient.SpeculativeKey), props.GetValueOrDefault(BeagleChatClient.FinishReasonKey));
}
