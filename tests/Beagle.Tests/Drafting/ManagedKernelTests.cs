using Beagle.Drafting;
using Beagle.Drafting.Kernels;
using Beagle.Tests.Infrastructure;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Drafting;

/// <summary>The managed C# Beagle kernel computes the same function as the tensor session (two independent paths).</summary>
[Collection("Drafting")]
public class ManagedKernelTests
{
    [Theory]
    [InlineData("beagle", true)]
    [InlineData("beagle", false)]
    [InlineData("eagle2", true)]
    public void Managed_and_tensor_sessions_agree_on_a_tree(string arch, bool concat)
    {
        var target = TestAssets.Stories;
        manual_seed(42);
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, arch), target);
        // Scale weights up a little so attention is not uniform and differences would show.
        using (no_grad()) foreach (var p in draft.parameters()) p.mul_(3);
        var prompt = TestAssets.StoriesTokenizer.Encode("Once upon a time there was a girl", true);
        using var cache = target.NewCache();
        using var pre = target.Forward(cache, prompt, Enumerable.Range(0, prompt.Length).ToArray());
        draft.Kernel = DraftKernel.Torch;
        using var a = draft.StartSession(256);
        draft.Kernel = DraftKernel.Managed;
        using var b = draft.StartSession(256);
        Assert.IsAssignableFrom<IArrayDraftSession>(b);        // the managed kernel
        Assert.False(a is IArrayDraftSession);                  // the tensor session
        int n = prompt.Length;
        foreach (var s in new[] { a, b }) { if (!concat) s.ConcatDraftStates = false; s.Commit(prompt, pre.Hidden); }
        for (int round = 0; round < 2; round++)
        {
            // root; two children of the root; a child of each child; then commit one token and go again.
            var calls = new (int[] Tok, int[] Pos, int[] Par)[]
            {
                ([300], [n], [-1]),
                ([301, 302], [n + 1, n + 1], [0, 0]),
                ([303, 304], [n + 2, n + 2], [1, 2]),
            };
            foreach (var (tok, pos, par) in calls)
            {
                using var la = a.Expand(tok, pos, par);
                using var lb = b.Expand(tok, pos, par);
                var diff = (la - lb).abs().max().item<float>();
                var scale = la.abs().max().item<float>();
                Assert.True(scale > 0.1);                            // non-trivial outputs
                // float32 rounding of two summation orders: relative to the log-probs' magnitude (tens here)
                Assert.True(diff < 1e-5 * (1 + scale), $"round {round}, tokens [{string.Join(",", tok)}]: max |logp diff| {diff} (scale {scale})");
            }
            a.EndRound(); b.EndRound();
            using var h = pre.Hidden.narrow(0, 0, 1);
            a.Commit([300], h); b.Commit([300], h);
            n++;
        }
    }
}
