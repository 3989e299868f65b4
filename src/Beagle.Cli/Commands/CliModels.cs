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
        string path = s.Target ?? DefaultModelPath();
        string tokPath = s.Tokenizer ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "tok512.bin");
        using var w = Llama2cCheckpoint.Load(path);
        var model = new LlamaModel(w, device);
        return (model, Llama2cTokenizer.Load(tokPath, model.Config.VocabSize));
    }

    static string DefaultModelPath()
    {
        var dir = Environment.GetEnvironmentVariable("BEAGLE_MODELS");
        if (dir is not null && File.Exists(Path.Combine(dir, "stories260K.bin"))) return Path.Combine(dir, "stories260K.bin");
        throw new FileNotFoundException("no --target given and the default model is not available: set BEAGLE_MODELS to a folder holding stories260K.bin and tok512.bin");
    }
}
