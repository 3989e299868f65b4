using Beagle.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Models;

/// <summary>
/// The libtorch target forward (the backend of other devices than the CPU) against the CPU backend on the same weights:
/// it runs here on the CPU, so the GPU path is exercised on a machine without a GPU. The two share only the folding of
/// the weights; products, norms, rotary (partner rows projected vs gathered), SwiGLU and attention are each backend's
/// own, so agreement to float rounding checks both: causal chunks (prefill, decode, verification), tree rows in a
/// batch with their parents, the draft LM's host mask, training features and logits; with grouped heads, qkv bias and
/// a sliding window.
/// </summary>
public class TorchTargetForwardTests
{
    static (LlamaModel Cpu, LlamaModel Torch) Models(bool bias, int? window)
    {
        var config = new ModelConfig
        {
            ModelType = "test", Dim = 48, HiddenDim = 64, Layers = 2, Heads = 4, KvHeads = 2, VocabSize = 64, MaxSeqLen = 96,
            QkvBias = bias, SlidingWindow = window,
        };
        using var w = LlamaWeights.Random(config, seed: 7);
        using var ten = 10.0.ToScalar();   // explicit: an implicit Scalar can be finalised mid-call
        foreach (var l in w.Layers) { l.Wq.mul_(ten); l.Wk.mul_(ten); }   // peaked attention, so a wrong mask or slot shows
        return (new LlamaModel(w), LlamaModel.WithTorchForward(w));
    }

    static void AssertClose(Tensor expected, Tensor actual, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        var scale = expected.abs().max().item<float>();
        var diff = (expected - actual).abs().max().item<float>();
        Assert.True(diff <= 1e-4f * Math.Max(1f, scale), $"{what}: max |difference| {diff} (scale {scale})");
    }

    [Theory]
    [InlineData(false, null)]
    [InlineData(true, null)]
    [InlineData(false, 12)]
    public void Causal_chunks_match_the_cpu_forward(bool bias, int? window)
    {
        var (cpu, torchModel) = Models(bias, window);
        using var _1 = cpu; using var _2 = torchModel;
        var rng = new Random(3);
        var tokens = Enumerable.Range(0, 50).Select(_ => rng.Next(64)).ToArray();
        using var a = cpu.NewCache(); using var b = torchModel.NewCache();
        int at = 0;
        foreach (var n in new[] { 40, 1, 6, 1, 2 })   // a prefill past the C# attention's limit, decode steps, verification blocks
        {
            var toks = tokens[at..(at + n)]; var pos = Enumerable.Range(at, n).ToArray();
            using var x = cpu.Forward(a, toks, pos); using var y = torchModel.Forward(b, toks, pos);
            AssertClose(x.Logits, y.Logits, $"logits of tokens {at}..{at + n}");
            AssertClose(x.Hidden, y.Hidden, $"hidden of tokens {at}..{at + n}");
            at += n;
        }
        Assert.Equal(a.Length, b.Length);
        using var last = cpu.Forward(a, [5, 6, 7], [at, at + 1, at + 2], lastLogitsOnly: true);
        using var lastT = torchModel.Forward(b, [5, 6, 7], [at, at + 1, at + 2], lastLogitsOnly: true);
        Assert.Equal(1, lastT.Logits.shape[0]);
        AssertClose(last.Logits, lastT.Logits, "last row's logits");
    }

    [Fact]
    public void Batched_trees_and_host_masks_match_the_cpu_forward()
    {
        var (cpu, torchModel) = Models(bias: true, window: null);
        using var _1 = cpu; using var _2 = torchModel;
        var rng = new Random(11);
        LlamaModel[] models = [cpu, torchModel];
        var caches = models.Select(m => new[] { m.NewCache(), m.NewCache() }).ToArray();
        try
        {
            int[][] prompts = [Enumerable.Range(0, 9).Select(_ => rng.Next(64)).ToArray(), Enumerable.Range(0, 4).Select(_ => rng.Next(64)).ToArray()];
            for (int m = 0; m < 2; m++)
                for (int s = 0; s < 2; s++)
                    using (models[m].Forward(caches[m][s], prompts[s], Enumerable.Range(0, prompts[s].Length).ToArray())) { }
            // Sequence 0: a tree of five rows (two branches); sequence 1: a chain of two.
            int[] parents = [-1, 0, 0, 1, 2], depths = [0, 1, 1, 2, 2];
            var outs = new ForwardOutput[2];
            for (int m = 0; m < 2; m++)
                outs[m] = models[m].ForwardBatch([
                    new SequenceRows(caches[m][0], [3, 9, 12, 40, 41], depths.Select(d => 9 + d).ToArray(), parents),
                    new SequenceRows(caches[m][1], [8, 2], [4, 5])]);
            using (outs[0]) using (outs[1])
            {
                AssertClose(outs[0].Logits, outs[1].Logits, "batched tree logits");
                AssertClose(outs[0].Hidden, outs[1].Hidden, "batched tree hidden");
            }
            // A host mask over scattered slots (the draft LM's case): row 1 sees the prompt and row 0, not the tree above.
            int start = caches[0][1].Length, S = start + 2;
            var allowed = new bool[2 * S];
            for (int i = 0; i < 2; i++) { Array.Fill(allowed, true, i * S, 4); allowed[i * S + start + i] = true; }
            allowed[S + start] = true;
            using var p = cpu.Forward(caches[0][1], [20, 21], [6, 7], allowed);
            using var q = torchModel.Forward(caches[1][1], [20, 21], [6, 7], allowed);
            AssertClose(p.Logits, q.Logits, "host-masked logits");
        }
        finally { foreach (var c in caches.SelectMany(c => c)) c.Dispose(); }
    }

    [Fact]
    public void Training_features_and_logits_match_the_cpu_forward()
    {
        var (cpu, torchModel) = Models(bias: false, window: 12);
        using var _1 = cpu; using var _2 = torchModel;
        var rng = new Random(5);
        using var tokens = tensor(Enumerable.Range(0, 3 * 20).Select(_ => (long)rng.Next(64)).ToArray(), [3, 20]);
        using var h = cpu.HiddenStates(tokens); using var g = torchModel.HiddenStates(tokens);
        AssertClose(h, g, "hidden states");
        using var lh = cpu.Logits(h); using var lg = torchModel.Logits(h);
        AssertClose(lh, lg, "logits of the same states");
    }
}
