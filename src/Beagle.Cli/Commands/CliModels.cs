using Beagle.Checkpoints;
using Beagle.Models;
using Beagle.Runtime;
using Beagle.Tokenization;

namespace Beagle.Cli.Commands;

/// <summary>Loads the target (and tokenizer) a command asked for.</summary>
internal static class CliModels
{
    public static (LlamaModel Model, ITokenizer Tokenizer) LoadTarget(ModelSettings s)
    {
        TorchSharp.torch.set_num_threads(s.Threads);
        var device = DeviceSelector.Resolve(s.Device);
        var (path, tokPath) = ResolvePaths(s);
        using var w = Llama2cCheckpoint.Load(path);
        var model = new LlamaModel(w, device);
        return (model, Llama2cTokenizer.Load(tokPath, model.Config.VocabSize));
    }

    /// <summary>
    /// The target and tokenizer files: --target (tokenizer: --tokenizer, else tok512.bin next to it), or the default
    /// model from <see cref="ModelStore"/> ($BEAGLE_MODELS, else the user cache, downloading once).
    /// </summary>
    public static (string Target, string Tokenizer) ResolvePaths(ModelSettings s)
    {
        if (s.Target is null)
        {
            var (model, tok) = new ModelStore().GetDefaultModel();
            return (model, s.Tokenizer ?? tok);
        }
        return (s.Target, s.Tokenizer ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(s.Target))!, "tok512.bin"));
    }
}
