using Beagle.Compute;
using Beagle.Models;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Models;

/// <summary>
/// The C# attention of short forwards (<see cref="ManagedAttention"/>) against libtorch's ops on the same inputs: the
/// same model run with <c>UseManagedAttention</c> on and off, causal and tree-masked, with grouped-query heads, a head
/// dimension that is not a multiple of the SIMD width, qkv bias and a sliding window. Rotary goes with it (C# on the
/// managed path, libtorch ops on the other). Products, norms and SwiGLU are C# on the CPU either way: PackedMatrixTests
/// checks the products against a plain loop, the golden tests the whole forward against the C reference.
/// </summary>
public class ManagedForwardTests
{
    static LlamaModel RandomModel(bool bias, int? window, int heads = 4, int kvHeads = 2)
    {
        var config = new ModelConfig
        {
            ModelType = "test", Dim = 48, HiddenDim = 64, Layers = 2, Heads = heads, KvHeads = kvHeads, VocabSize = 64, MaxSeqLen = 96,
            QkvBias = bias, SlidingWindow = window,
        };
        using var w = LlamaWeights.Random(config, seed: 5);
        using var twenty = 20.0.ToScalar();   // explicit: an implicit Scalar can be finalised mid-call (docs/benchmarks.md)
        foreach (var l in w.Layers) { l.Wq.mul_(twenty); l.Wk.mul_(twenty); }   // peaked attention, so a wrong mask or slot shows
        return new LlamaModel(w);
    }

    static void AssertClose(Tensor expected, Tensor actual, string what)
    {
        var scale = expected.abs().max().item<float>();
        var diff = (expected - actual).abs().max().item<float>();
        Assert.True(diff <= 1e-5f * Math.Max(1f, scale), $"{what}: max |difference| {diff} (scale {scale})");
    }

    [Theory]
    [InlineData(false, null, 4, 2)]
    [InlineData(true, null, 4, 2)]
    [InlineData(false, 12, 4, 2)]
    [InlineData(false, null, 6, 2)]   // three query heads per kv head: a pair and a single (ManagedAttention pairs heads)
    [InlineData(false, 12, 4, 4)]     // no grouping: singles only
    public void Causal_chunks_match_libtorch(bool bias, int? window, int heads, int kvHeads)
    {
        using var model = RandomModel(bias, window, heads, kvHeads);
        var rng = new Random(3);
        var tokens = Enumerable.Range(0, 50).Select(_ => rng.Next(64)).ToArray();
        int[] chunks = [20, 1, 6, 1, 4, 5, 13];   // prefill, decode steps, verification-sized blocks
        using var managed = model.NewCache(); using var torchCache = model.NewCache();
        int at = 0;
        foreach (var n in chunks)
        {
            var toks = tokens[at..(at + n)]; var pos = Enumerable.Range(at, n).ToArray();
            model.UseManagedAttention = true;
            using var a = model.Forward(managed, toks, pos);
            model.UseManagedAttention = false;
            using var b = model.Forward(torchCache, toks, pos);
            AssertClose(b.Logits, a.Logits, $"logits of tokens {at}..{at + n}");
            AssertClose(b.Hidden, a.Hidden, $"hidden of tokens {at}..{at + n}");
            at += n;
        }
        model.UseManagedAttention = true;
    }

    [Theory]
    [InlineData(4, 2)]
    [InlineData(6, 2)]
    public void Tree_masked_verification_matches_libtorch_and_keeps_the_right_slots(int heads, int kvHeads)
    {
        using var model = RandomModel(false, null, heads, kvHeads);
        var rng = new Random(4);
        var context = Enumerable.Range(0, 30).Select(_ => rng.Next(64)).ToArray();
        // A tree of 10 nodes: node 0 the root, each later node under a random earlier one.
        int n = 10;
        var parents = new int[n]; var depths = new int[n]; parents[0] = -1;
        for (int i = 1; i < n; i++) { parents[i] = rng.Next(i); depths[i] = depths[parents[i]] + 1; }
        var treeTokens = Enumerable.Range(0, n).Select(_ => rng.Next(64)).ToArray();
        var allowed = new bool[n * (30 + n)];
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < 30; j++) allowed[i * (30 + n) + j] = true;
            for (int up = i; up >= 0; up = parents[up]) allowed[i * (30 + n) + 30 + up] = true;
        }
        using var mask = tensor(allowed, [n, 30 + n]);
        var positions = depths.Select(d => 30 + d).ToArray();

        ForwardOutput Run(bool useManaged, KvCache cache)
        {
            model.UseManagedAttention = useManaged;
            using (model.Forward(cache, context, Enumerable.Range(0, 30).ToArray())) { }
            return model.Forward(cache, treeTokens, positions, mask);
        }
        using var c1 = model.NewCache(); using var c2 = model.NewCache();
        using var a = Run(true, c1);
        using var b = Run(false, c2);
        AssertClose(b.Logits, a.Logits, "tree logits");

        // After keeping one root-to-leaf path, the next token's forward sees the same cache either way, and equals a
        // causal run of context + path from scratch.
        var path = new List<int>(); for (int i = n - 1; i >= 0; i = parents[i]) path.Insert(0, i);
        var slots = path.Select(i => (long)(30 + i)).ToArray();
        c1.KeepSlots(30, slots); c2.KeepSlots(30, slots);
        int next = 30 + path.Count;
        model.UseManagedAttention = true;
        using var a2 = model.Forward(c1, [7], [next]);
        model.UseManagedAttention = false;
        using var b2 = model.Forward(c2, [7], [next]);
        using var c3 = model.NewCache();
        var seq = context.Concat(path.Select(i => treeTokens[i])).Append(7).ToArray();
        using var fresh = model.Forward(c3, seq, Enumerable.Range(0, seq.Length).ToArray());   // > 32 tokens: libtorch
        model.UseManagedAttention = true;
        AssertClose(b2.Logits, a2.Logits, "next step after KeepSlots");
        AssertClose(fresh.Logits[^1].unsqueeze(0), a2.Logits, "next step vs a fresh causal run");
    }
}

/// <summary>
/// Batch invariance on the CPU: a token's logits are bit-identical whether it is decoded alone (plain decoding) or
/// verified among others (speculative decoding), so greedy speculative output equals plain output exactly, not only
/// up to near-ties.
/// </summary>
public class BatchInvarianceTests
{
    [Fact]
    public void A_chain_verified_at_once_gives_the_logits_of_one_token_steps_bit_for_bit()
    {
        var model = Beagle.Tests.Infrastructure.TestAssets.Stories;
        var rng = new Random(12);
        var prompt = Enumerable.Range(0, 20).Select(_ => rng.Next(1, model.Config.VocabSize)).ToArray();
        foreach (int T in new[] { 2, 5, 6, 7, 9 })
        {
            var chain = Enumerable.Range(0, T).Select(_ => rng.Next(1, model.Config.VocabSize)).ToArray();
            using var batched = model.NewCache(); using var single = model.NewCache();
            using (model.Forward(batched, prompt, Enumerable.Range(0, prompt.Length).ToArray())) { }
            using (model.Forward(single, prompt, Enumerable.Range(0, prompt.Length).ToArray())) { }
            using var all = model.Forward(batched, chain, Enumerable.Range(prompt.Length, T).ToArray());
            var expected = all.Logits.data<float>().ToArray();
            for (int t = 0; t < T; t++)
            {
                using var one = model.Forward(single, [chain[t]], [prompt.Length + t]);
                var got = one.Logits.data<float>().ToArray();
                int v = got.Length;
                for (int j = 0; j < v; j++)
                    Assert.True(expected[t * v + j] == got[j], $"T={T}, row {t}, logit {j}: {expected[t * v + j]} batched vs {got[j]} alone");
            }
        }
    }

    /// <summary>
    /// Several sequences in one forward (continuous batching): different context lengths, one-token steps, chains and
    /// trees, each with its own cache. Every row's logits and hidden state must equal those of the sequence run alone
    /// through Forward (tree mask as a tensor), bit for bit, and the caches must hold the same keys and values after.
    /// </summary>
    [Theory]
    [InlineData("stories260K")]
    [InlineData("stories5M")]
    public void Sequences_verified_in_one_forward_give_the_logits_of_each_sequence_alone_bit_for_bit(string name)
    {
        var model = Beagle.Tests.Infrastructure.TestAssets.Target(name);
        int V = model.Config.VocabSize;
        var rng = new Random(21);
        int[] contexts = [3, 17, 40, 8, 25];
        // Per sequence: null = a chain of that many rows, else a tree's parents (row 0 the root).
        int[]?[] shapes = [null, [-1, 0, 0, 1, 1, 2, 3], null, [-1, 0, 1, 0, 3, 3], null];
        int[] chainRows = [1, 0, 6, 0, 4];
        int B = contexts.Length;
        var batched = new Beagle.Models.KvCache[B]; var alone = new Beagle.Models.KvCache[B];
        var rows = new Beagle.Models.SequenceRows[B];
        try
        {
            for (int b = 0; b < B; b++)
            {
                batched[b] = model.NewCache(); alone[b] = model.NewCache();
                var prompt = Enumerable.Range(0, contexts[b]).Select(_ => rng.Next(1, V)).ToArray();
                var pos = Enumerable.Range(0, prompt.Length).ToArray();
                using (model.Forward(batched[b], prompt, pos)) { }
                using (model.Forward(alone[b], prompt, pos)) { }
                var parents = shapes[b];
                int T = parents?.Length ?? chainRows[b];
                var depths = new int[T];
                if (parents is not null) for (int i = 1; i < T; i++) depths[i] = depths[parents[i]] + 1;
                else for (int i = 0; i < T; i++) depths[i] = i;
                rows[b] = new Beagle.Models.SequenceRows(batched[b], Enumerable.Range(0, T).Select(_ => rng.Next(1, V)).ToArray(),
                    depths.Select(d => contexts[b] + d).ToArray(), parents);
            }
            using var all = model.ForwardBatch(rows);
            var logits = all.Logits.data<float>().ToArray(); var hidden = all.Hidden.data<float>().ToArray();
            int D = model.Config.Dim, at = 0;
            for (int b = 0; b < B; b++)
            {
                var r = rows[b]; int T = r.Tokens.Length, S = contexts[b] + T;
                Tensor? mask = null;
                if (r.IsTree)
                {
                    var parents = r.TreeParents;
                    var allowed = new bool[T * S];
                    for (int i = 0; i < T; i++)
                    {
                        for (int j = 0; j < contexts[b]; j++) allowed[i * S + j] = true;
                        for (int a = i; a >= 0; a = parents[a]) allowed[i * S + contexts[b] + a] = true;
                    }
                    mask = tensor(allowed, [T, S]);
                }
                using var one = model.Forward(alone[b], r.Tokens, r.Positions, mask);
                mask?.Dispose();
                var l1 = one.Logits.data<float>().ToArray(); var h1 = one.Hidden.data<float>().ToArray();
                for (int j = 0; j < T * V; j++)
                    Assert.True(logits[at * V + j] == l1[j], $"{name}, sequence {b}, row {j / V}, logit {j % V}: {logits[at * V + j]} batched vs {l1[j]} alone");
                for (int j = 0; j < T * D; j++)
                    Assert.True(hidden[at * D + j] == h1[j], $"{name}, sequence {b}, row {j / D}: hidden differs");
                Assert.Equal(alone[b].Length, batched[b].Length);
                for (int l = 0; l < model.Config.Layers; l++)
                {
                    Assert.Equal(alone[b].K[l].narrow(2, 0, S).data<float>().ToArray(), batched[b].K[l].narrow(2, 0, S).data<float>().ToArray());
                    Assert.Equal(alone[b].V[l].narrow(2, 0, S).data<float>().ToArray(), batched[b].V[l].narrow(2, 0, S).data<float>().ToArray());
                }
                at += T;
            }
        }
        finally
        {
            foreach (var c in batched) c?.Dispose();
            foreach (var c in alone) c?.Dispose();
        }
    }

    [Fact]
    public void A_batched_forward_rejects_a_shared_cache_and_a_bad_tree_before_touching_any_cache()
    {
        var model = Beagle.Tests.Infrastructure.TestAssets.Stories;
        using var a = model.NewCache(); using var b = model.NewCache();
        Assert.Throws<ArgumentException>(() => model.ForwardBatch([new Beagle.Models.SequenceRows(a, [5], [0]), new Beagle.Models.SequenceRows(a, [6], [0])]));
        Assert.Throws<ArgumentException>(() => model.ForwardBatch([new Beagle.Models.SequenceRows(a, [5], [0]), new Beagle.Models.SequenceRows(b, [6, 7], [0, 1], [-1, 1])]));
        Assert.Equal(0, a.Length);
        Assert.Equal(0, b.Length);
    }
}
