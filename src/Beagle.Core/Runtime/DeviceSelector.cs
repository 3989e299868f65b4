using static TorchSharp.torch;

namespace Beagle.Runtime;

/// <summary>Chooses the tensor device at run time: CUDA when available (and built with a CUDA libtorch), else CPU.</summary>
public static class DeviceSelector
{
    /// <param name="name">"auto" (default), "cpu" or "cuda" / "cuda:N".</param>
    public static Device Resolve(string? name = "auto")
    {
        name = string.IsNullOrWhiteSpace(name) ? "auto" : name.Trim().ToLowerInvariant();
        if (name == "cpu") return CPU;
        bool cuda = TorchSharp.torch.cuda.is_available();
        if (name == "auto") return cuda ? CUDA : CPU;
        if (name.StartsWith("cuda"))
        {
            if (!cuda) throw new InvalidOperationException($"device '{name}' was asked for but CUDA is not available: build with -p:TorchBackend=cuda on a machine with a CUDA libtorch, or use --device cpu");
            return new Device(name);
        }
        throw new ArgumentException($"unknown device '{name}' (use auto, cpu or cuda[:N])", nameof(name));
    }
}
