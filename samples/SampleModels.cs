using Beagle.SemanticKernel;

namespace Beagle.Samples;

/// <summary>Command-line handling shared by the samples: --target/--tokenizer/--draft, or $BEAGLE_MODELS, and --prompt.</summary>
internal static class SampleModels
{
    public static (BeagleModelOptions Options, string? Prompt) Parse(string[] args)
    {
        string? target = null, tokenizer = null, draft = null, prompt = null, template = null;
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
                case "--max-tokens": maxTokens = int.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"unknown argument '{args[i]}' (use --target, --tokenizer, --draft, --no-draft, --template, --max-tokens, --prompt)");
            }
        }
        if (target is null)
        {
            var dir = Environment.GetEnvironmentVariable("BEAGLE_MODELS");
            if (string.IsNullOrEmpty(dir) || !File.Exists(Path.Combine(dir, "stories260K.bin")))
                throw new ArgumentException("no --target given: pass --target PATH (and --tokenizer PATH), or set BEAGLE_MODELS to a folder with stories260K.bin and tok512.bin");
            target = Path.Combine(dir, "stories260K.bin");
            tokenizer ??= Path.Combine(dir, "tok512.bin");
            if (draft is null && !noDraft) draft = BundledDraft();   // the repository's trained Beagle draft for stories260K
        }
        if (noDraft) draft = null;
        var options = new BeagleModelOptions
        {
            TargetPath = target, TokenizerPath = tokenizer, DraftPath = draft, ChatTemplate = template,
            Threads = 1, Device = "auto", DefaultMaxTokens = maxTokens,
        };
        var problems = options.Problems(checkFiles: true);
        if (problems.Count > 0) throw new ArgumentException(string.Join("; ", problems));
        return (options, prompt);
    }

    /// <summary>models/stories260K/beagle of this repository, found by walking up from the sample's output folder.</summary>
    static string? BundledDraft()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            var candidate = Path.Combine(d.FullName, "models", "stories260K", "beagle");
            if (File.Exists(Path.Combine(candidate, "draft.json"))) return candidate;
        }
        return null;
    }

    /// <summary>One line of statistics from a response's AdditionalProperties / Metadata.</summary>
    public static string Stats(IReadOnlyDictionary<string, object?>? props, long? outputTokens) =>
        props is null ? "" : string.Format(System.Globalization.CultureInfo.InvariantCulture,
            "[{0} tokens, {1:F1} tok/s, acceptance length {2:F2}, speculative {3}, {4}]",
            outputTokens, props.GetValueOrDefault(BeagleChatClient.TokensPerSecondKey), props.GetValueOrDefault(BeagleChatClient.AcceptanceLengthKey),
            props.GetValueOrDefault(BeagleChatClient.SpeculativeKey), props.GetValueOrDefault(BeagleChatClient.FinishReasonKey));
}
