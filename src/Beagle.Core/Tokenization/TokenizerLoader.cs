namespace Beagle.Tokenization;

/// <summary>
/// Picks the tokenizer for a model: a llama2.c tokenizer file (.bin), a Hugging Face tokenizer.json, or a SentencePiece
/// tokenizer.model — given as a file, or found in a model folder (tokenizer.json preferred over tokenizer.model).
/// The tokenizer must fit the model: a HF tokenizer may be smaller than the model's (often padded) vocabulary but
/// never larger, since the model could not score its ids; a llama2.c tokenizer must match exactly, as run.c assumes.
/// </summary>
public static class TokenizerLoader
{
    /// <param name="path">A tokenizer file, or a folder holding tokenizer.json / tokenizer.model.</param>
    /// <param name="modelVocabSize">The model's vocabulary size, checked against the tokenizer's.</param>
    public static ITokenizer Load(string path, int modelVocabSize)
    {
        string file = path;
        if (Directory.Exists(path))
        {
            var json = Path.Combine(path, "tokenizer.json");
            var sp = Path.Combine(path, "tokenizer.model");
            file = File.Exists(json) ? json : File.Exists(sp) ? sp
                : throw new FileNotFoundException($"{path}: no tokenizer.json or tokenizer.model in the model folder; pass the tokenizer explicitly");
        }
        if (!File.Exists(file)) throw new FileNotFoundException($"tokenizer not found: {file}", file);

        var dir = Path.GetDirectoryName(Path.GetFullPath(file))!;
        var config = Path.Combine(dir, "tokenizer_config.json");
        var name = Path.GetFileName(file);
        ITokenizer tok;
        if (name.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) tok = HuggingFaceTokenizer.FromTokenizerJson(file, config);
        else if (name.EndsWith(".model", StringComparison.OrdinalIgnoreCase)) tok = HuggingFaceTokenizer.FromSentencePieceModel(file, config);
        else return Llama2cTokenizer.Load(file, modelVocabSize);   // checks the exact size itself

        if (tok.VocabSize > modelVocabSize)
            throw new InvalidDataException($"{file}: the tokenizer has {tok.VocabSize} tokens but the model's vocabulary has only {modelVocabSize}; they do not belong together");
        return tok;
    }
}
