using Beagle.Drafting.DraftLm;
using Beagle.Drafting.NGram;
using Beagle.Models;
using Beagle.Tokenization;

namespace Beagle.Drafting;

/// <summary>
/// The drafts that need no training, as every face names them: a draft model (<c>DraftModel</c>: a smaller language
/// model with the target's tokenizer) or prompt lookup (<c>NGram</c>). One rule, so that the CLI, the chat faces, hosting
/// and ML.NET load them alike.
/// </summary>
public static class TrainingFreeDrafts
{
    /// <summary>
    /// The draft these settings ask for, or null when they ask for neither. Both at once is refused: one draft serves
    /// a generation.
    /// </summary>
    /// <param name="draftModel">A llama2.c .bin file, a Hugging Face folder or a known model name; null = none.</param>
    /// <param name="ngram">Prompt lookup.</param>
    public static IDraftModel? Create(string? draftModel, bool ngram, LlamaModel target, ITokenizer tokenizer, NGramOptions? ngramOptions = null)
    {
        if (draftModel is not null && ngram) throw new ArgumentException("choose a draft model or n-gram lookup, not both");
        if (ngram) return new NGramDraft(target, ngramOptions);
        return draftModel is null ? null : DraftLmModel.Load(draftModel, target, tokenizer);
    }

    /// <summary>
    /// Why these settings cannot work, or null: two drafts asked for (with <paramref name="trainedDraftPath"/>, a face's
    /// trained draft), or, with <paramref name="checkFiles"/>, a draft model path that does not exist.
    /// </summary>
    public static string? Problem(string? draftModel, bool ngram, string? trainedDraftPath, bool checkFiles, string prefix = "")
    {
        if (draftModel is not null && ngram) return $"{prefix}DraftModel and {prefix}NGram exclude each other: one draft serves a generation";
        if ((draftModel is not null || ngram) && trainedDraftPath is not null)
            return $"{prefix}DraftPath and {prefix}{(ngram ? "NGram" : "DraftModel")} exclude each other: one draft serves a generation";
        if (checkFiles && draftModel is not null && !Runtime.DefaultModels.IsKnownName(draftModel) && !File.Exists(draftModel) && !Directory.Exists(draftModel))
            return $"{prefix}DraftModel: no llama2.c file or Hugging Face folder at '{draftModel}' (or a known name: stories260K, stories5M)";
        return null;
    }
}
