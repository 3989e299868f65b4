using Beagle.Models;
using Beagle.Tokenization;
using static TorchSharp.torch;

namespace Beagle.Checkpoints;

/// <summary>A target model ready to generate with, and where it came from. Owns <see cref="Model"/>.</summary>
/// <param name="Format">"llama2c" or "huggingface".</param>
public sealed record LoadedTarget(LlamaModel Model, ITokenizer Tokenizer, string Path, string Format) : IDisposable
{
    public void Dispose() => Model.Dispose();
}

/// <summary>
/// The one way to load a target: a llama2.c checkpoint file (.bin) or a Hugging Face folder (config.json +
/// safetensors), with its tokenizer checked against the model's vocabulary.
/// </summary>
public static class TargetLoader
{
    /// <param name="path">A llama2.c .bin file or a Hugging Face model folder.</param>
    /// <param name="tokenizerPath">
    /// The tokenizer; optional. Default for a llama2.c file: tokenizer.bin or tok512.bin next to it. Default for a HF
    /// folder: its tokenizer.json or tokenizer.model.
    /// </param>
    /// <param name="device">Where the model runs (default CPU).</param>
    public static LoadedTarget Load(string path, string? tokenizerPath = null, Device? device = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (Directory.Exists(path))
        {
            if (!HuggingFaceCheckpoint.IsHuggingFaceFolder(path))
                throw new InvalidDataException($"{path}: a folder without config.json; expected a Hugging Face model folder or a llama2.c .bin file");
            var tok = TokenizerLoader.Load(tokenizerPath ?? path, HuggingFaceCheckpoint.ReadConfig(path).VocabSize);
            using var w = HuggingFaceCheckpoint.Load(path);
            return new LoadedTarget(new LlamaModel(w, device), tok, path, "huggingface");
        }
        if (!File.Exists(path)) throw new FileNotFoundException($"target model not found: {path} (give a llama2.c .bin file or a Hugging Face folder)", path);

        using var weights = Llama2cCheckpoint.Load(path);
        tokenizerPath ??= DefaultLlama2cTokenizer(path);
        var tokenizer = TokenizerLoader.Load(tokenizerPath, weights.Config.VocabSize);
        return new LoadedTarget(new LlamaModel(weights, device), tokenizer, path, "llama2c");
    }

    static string DefaultLlama2cTokenizer(string modelPath)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(modelPath))!;
        foreach (var name in new[] { "tokenizer.bin", "tok512.bin" })
            if (File.Exists(Path.Combine(dir, name))) return Path.Combine(dir, name);
        throw new FileNotFoundException($"{modelPath}: no tokenizer given and neither tokenizer.bin nor tok512.bin is next to it; pass the tokenizer file (--tokenizer <file>)");
    }
}
