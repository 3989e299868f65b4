using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Beagle.Tests.Drafting;

/// <summary>Draft tests share torch's global generator: run them one at a time (xunit runs classes in parallel otherwise).</summary>
[Xunit.CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DraftingCollection { public const string Name = "Drafting (global torch RNG)"; }

/// <summary>Deterministic drafts with random weights over the stories260K target, and its true states.</summary>
internal static class DraftTestKit
{
    // Held for the process: TorchSharp's implicit number→Scalar can be finalised while libtorch still reads it.
    static readonly Scalar Half = 0.5.ToScalar();

    public static LlamaModel Target => TestAssets.Stories;

    /// <summary>A draft with seeded random weights; norm weights and biases are randomised too, so that a wrongly folded one shows.</summary>
    public static DraftModelBase NewDraft(string arch, int seed = 7, int[]? vocab = null)
    {
        manual_seed(seed);
        var d = DraftCheckpoint.Create(DraftConfig.ForTarget(Target.Config, arch, vocab), Target);
        using var _ = no_grad();
        foreach (var (name, p) in d.named_parameters())
        {
            if (p.dim() == 1) p.copy_(rand(p.shape).add_(Half, TorchScalars.One));   // norms in [0.5, 1.5), biases; matrices keep the default init
        }
        return d;
    }

    /// <summary>Seeded token ids in [3, 512).</summary>
    public static int[] Tokens(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Next(3, 512)).ToArray();
    }

    /// <summary>The target's true states h_0..h_{n-1} for tokens: [n, D].</summary>
    public static Tensor TrueStates(int[] tokens)
    {
        using var scope = NewDisposeScope();
        var ids = tensor(tokens.Select(t => (long)t).ToArray()).unsqueeze(0);
        return Target.HiddenStates(ids)[0].MoveToOuterDisposeScope();
    }

    public static Tensor Longs(params long[] v) => tensor(v);
    public static Tensor Range(long from, long to) => arange(from, to, dtype: ScalarType.Int64);

    public static float MaxAbsDiff(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        return (a - b).abs().max().item<float>();
    }
}
