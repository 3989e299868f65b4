namespace Beagle.Drafting.Kernels;

/// <summary>Which implementation runs a draft session.</summary>
public enum DraftKernel
{
    /// <summary>The managed kernel on the CPU for small drafts (dim ≤ 1024, small vocabulary), tensors otherwise.
    /// The environment variable BEAGLE_DRAFT_KERNEL=torch|managed overrides it (for A/B measurements).</summary>
    Auto,
    /// <summary>TorchSharp tensor ops (any device).</summary>
    Torch,
    /// <summary>Plain C# SIMD math (CPU only).</summary>
    Managed,
}
