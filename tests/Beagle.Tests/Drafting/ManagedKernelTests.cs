using Beagle.Compute;
using Beagle.Drafting;
using Beagle.Drafting.Kernels;
using Beagle.Tests.Infrastructure;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Drafting;

/// <summary>The managed C# Beagle kernel computes the same function as the tensor session (two independent paths).</summary>
[Collection("Drafting")]
public class ManagedKernelTests
{
    [Theory]
    [InlineData("beagle", true, false)]
    [InlineData("beagle", false, false)]
    [InlineData("eagle2", true, false)]
    [InlineData("beagle", true, true)]    // a reduced output vocabulary: each path has its own copy of the head rows
    [InlineData("eagle2", true, true)]
    public void Managed_and_tensor_sessions_agree_on_a_tree(string arch, bool concat, bool reducedVocab)
    {
        var target = TestAssets.Stories;
        manual_seed(42);
        int[]? vocab = reducedVocab ? Enumerable.Range(0, 400).Select(i => (i * 7) % target.Config.VocabSize).Distinct().ToArray() : null;
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, arch, vocab), target);
        // Scale weights up a little so attention is not uniform and differences would show. (Explicit Scalars: an implicit
        // one can be finalised while libtorch reads it.)
        using var three = 3.0.ToScalar();
        using (no_grad()) foreach (var p in draft.parameters()) p.mul_(three);
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

    [Theory]
    [InlineData("beagle")]
    [InlineData("eagle2")]
    public void Commit_from_an_array_equals_commit_from_a_tensor(string arch)
    {
        var target = TestAssets.Stories;
        manual_seed(7);
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, arch), target);
        draft.Kernel = DraftKernel.Managed;
        var prompt = TestAssets.StoriesTokenizer.Encode("Tom and his dog went to the park", true);
        using var cache = target.NewCache();
        using var pre = target.Forward(cache, prompt, Enumerable.Range(0, prompt.Length).ToArray());
        using var a = draft.StartSession(128);
        using var b = draft.StartSession(128);
        a.Commit(prompt, pre.Hidden);
        var rows = pre.Hidden.contiguous().data<float>().ToArray();
        ((IArrayDraftSession)b).Commit(prompt, rows);
        Assert.Equal(a.Length, b.Length);
        int n = prompt.Length;
        foreach (var (tok, pos, par) in new (int[], int[], int[])[] { ([300], [n], [-1]), ([301], [n + 1], [0]) })
            Assert.Equal(((IArrayDraftSession)a).ExpandToBuffer(tok, pos, par).ToArray(), ((IArrayDraftSession)b).ExpandToBuffer(tok, pos, par).ToArray());
        b.EndRound();
        Assert.Throws<ArgumentException>(() => ((IArrayDraftSession)b).Commit([5, 6], new float[target.Config.Dim]));   // 2 tokens, 1 row
    }

    [Theory]
    [InlineData("beagle")]
    [InlineData("eagle2")]
    public void Sessions_share_one_weight_copy_until_it_is_invalidated(string arch)
    {
        var target = TestAssets.Stories;
        manual_seed(43);
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, arch), target);
        using var three = 3.0.ToScalar(); using var step = 1.1.ToScalar();
        using (no_grad()) foreach (var p in draft.parameters()) p.mul_(three);
        var prompt = TestAssets.StoriesTokenizer.Encode("Tom had a red ball", true);
        using var cache = target.NewCache();
        using var pre = target.Forward(cache, prompt, Enumerable.Range(0, prompt.Length).ToArray());
        int n = prompt.Length;
        Tensor Logp(DraftKernel kernel)
        {
            draft.Kernel = kernel;
            using var s = draft.StartSession(64);
            s.Commit(prompt, pre.Hidden);
            return s.Expand([300], [n], [-1]);
        }
        using var before = Logp(DraftKernel.Managed);
        using var beforeTorch = Logp(DraftKernel.Torch);                       // fills the tensor sessions' packed copy (CPU)
        using (no_grad()) foreach (var p in draft.parameters()) p.mul_(step);   // what an optimiser step does: weights change in place
        draft.InvalidateSessionWeights();
        using var managed = Logp(DraftKernel.Managed);
        using var torchPath = Logp(DraftKernel.Torch);                         // the live weights, packed afresh
        float scale = torchPath.abs().max().item<float>(), diff = (managed - torchPath).abs().max().item<float>();
        Assert.True(diff < 1e-5 * (1 + scale), $"a session after invalidation must see the new weights: max |difference| {diff} (scale {scale})");
        Assert.True((managed - before).abs().max().item<float>() > 1e-3f, "the weights did change");
    }

    [Theory]
    [InlineData(64, 64)]
    [InlineData(64, 344)]
    [InlineData(172, 64)]
    [InlineData(7, 13)]      // not a multiple of the SIMD width: the tails
    public void Matrix_vector_kernels_match_a_naive_product(int rows, int cols)
    {
        var r = new Random(rows * 1000 + cols);
        var x = Enumerable.Range(0, rows).Select(_ => (float)r.NextDouble() - 0.5f).ToArray();
        var w = Enumerable.Range(0, rows * cols).Select(_ => (float)r.NextDouble() - 0.5f).ToArray();   // [rows, cols]
        var wt = new float[w.Length];                                                                   // [cols, rows]
        for (int i = 0; i < rows; i++) for (int c = 0; c < cols; c++) wt[c * rows + i] = w[i * cols + c];
        var y1 = new float[cols]; var y2 = new float[cols];
        ManagedMath.MatVec(x, w, y1);
        ManagedMath.RowDots(x, wt, y2);
        for (int c = 0; c < cols; c++)
        {
            double e = 0; for (int i = 0; i < rows; i++) e += (double)x[i] * w[i * cols + c];
            Assert.True(Math.Abs(y1[c] - e) < 1e-4, $"MatVec[{c}] {y1[c]} vs {e}");
            Assert.True(Math.Abs(y2[c] - e) < 1e-4, $"RowDots[{c}] {y2[c]} vs {e}");
        }
    }

    [Theory]
    [InlineData(8, 1)] [InlineData(8, 5)] [InlineData(8, 8)] [InlineData(8, 9)] [InlineData(8, 15)] [InlineData(8, 16)]
    [InlineData(8, 31)] [InlineData(8, 33)] [InlineData(8, 83)] [InlineData(8, 96)] [InlineData(6, 83)] [InlineData(64, 47)]
    public void Attention_head_kernels_match_a_double_reference_and_the_pair_kernels_match_the_single_ones(int hd, int n)
    {
        // Key/value blocks head-dimension-major [hd, stride], slots past n filled with values that must not leak in.
        int stride = n + 5;
        var r = new Random(hd * 100 + n);
        float Rnd() => (float)(r.NextDouble() * 2 - 1);
        var k = Enumerable.Range(0, hd * stride).Select(_ => Rnd()).ToArray();
        var v = Enumerable.Range(0, hd * stride).Select(_ => Rnd()).ToArray();
        var q0 = Enumerable.Range(0, hd).Select(_ => Rnd()).ToArray();
        var q1 = Enumerable.Range(0, hd).Select(_ => Rnd()).ToArray();

        var single0 = new float[n]; var single1 = new float[n]; var pair0 = new float[n]; var pair1 = new float[n];
        float m0 = ManagedMath.HeadScores(q0, k, stride, n, single0), m1 = ManagedMath.HeadScores(q1, k, stride, n, single1);
        var (pm0, pm1) = ManagedMath.HeadScoresPair(q0, q1, k, stride, n, pair0, pair1);
        Assert.Equal(single0, pair0); Assert.Equal(single1, pair1); Assert.Equal(m0, pm0); Assert.Equal(m1, pm1);

        var expected = new double[n];
        for (int s = 0; s < n; s++) { double a = 0; for (int d = 0; d < hd; d++) a += (double)q0[d] * k[d * stride + s]; expected[s] = a; }
        for (int s = 0; s < n; s++) Assert.True(Math.Abs(single0[s] - expected[s]) < 1e-5, $"score {s}: {single0[s]} vs {expected[s]}");
        Assert.Equal((float)expected.Max(), m0, 5);

        // Softmax weights, then the weighted sums of both rows, single and pair.
        float inv0 = 1f / ManagedMath.ExpShifted(single0, m0), inv1 = 1f / ManagedMath.ExpShifted(single1, m1);
        double z = expected.Sum(x => Math.Exp(x - expected.Max()));
        for (int s = 0; s < n; s++) Assert.True(Math.Abs(single0[s] * inv0 - Math.Exp(expected[s] - expected.Max()) / z) < 1e-6, $"weight {s}");
        var o0 = new float[hd]; var o1 = new float[hd]; var po0 = new float[hd]; var po1 = new float[hd];
        ManagedMath.HeadWeightedSum(single0, v, stride, inv0, o0);
        ManagedMath.HeadWeightedSum(single1, v, stride, inv1, o1);
        ManagedMath.HeadWeightedSumPair(single0, single1, v, stride, inv0, inv1, po0, po1);
        Assert.Equal(o0, po0); Assert.Equal(o1, po1);
        for (int d = 0; d < hd; d++)
        {
            double e = 0; for (int s = 0; s < n; s++) e += Math.Exp(expected[s] - expected.Max()) / z * v[d * stride + s];
            Assert.True(Math.Abs(o0[d] - e) < 1e-5, $"output {d}: {o0[d]} vs {e}");
        }
    }

    [Theory]
    [InlineData(2, 0)] [InlineData(2, 3)] [InlineData(3, 2)] [InlineData(1, 1)]
    public void Draft_attention_gives_the_same_output_with_head_pairs_as_head_by_head(int groupSize, int extras)
    {
        // 2 kv heads of dimension 8, 100 slots: 37 committed, the extras (a node's ancestors' draft states) after them.
        var kv = new HeadMajorKv(2, 8, 100);
        var r = new Random(groupSize * 10 + extras);
        float[] Rnd(int n) => Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 2 - 1)).ToArray();
        var keys = new float[100][]; var values = new float[100][];   // [slot][kv head * 8 + d], as written
        for (int s = 0; s < 100; s++) kv.Write(s, keys[s] = Rnd(16), values[s] = Rnd(16));
        var q = Rnd(2 * groupSize * 8);
        var extra = Enumerable.Range(0, extras).Select(e => 60 + 3 * e).ToArray();
        int total = 37 + extras;
        var paired = new float[q.Length]; var single = new float[q.Length];
        kv.Attend(q, 37, extra, groupSize, 0.35f, new float[2 * total], paired);   // room for two rows: pairs
        kv.Attend(q, 37, extra, groupSize, 0.35f, new float[total], single);      // one row: head by head
        Assert.Equal(single, paired);
        // And against a double-precision softmax over the same slots, for the first head.
        var slots = Enumerable.Range(0, 37).Concat(extra).ToArray();
        double[] sc = slots.Select(s => { double a = 0; for (int d = 0; d < 8; d++) a += q[d] * 0.35 * keys[s][d]; return a; }).ToArray();
        double max = sc.Max(), z = sc.Sum(x => Math.Exp(x - max));
        for (int d = 0; d < 8; d++)
        {
            double e = 0; for (int i = 0; i < slots.Length; i++) e += Math.Exp(sc[i] - max) / z * values[slots[i]][d];
            Assert.True(Math.Abs(single[d] - e) < 1e-5, $"output {d}: {single[d]} vs {e}");
        }
        Assert.Throws<ArgumentException>(() => kv.Attend(q, 37, extra, groupSize, 0.35f, new float[total - 1], single));
    }

    [Fact]
    public void Exp_is_within_two_ulp_of_the_double_exponential_and_exactly_zero_for_masked_scores()
    {
        var r = new Random(7);
        double worst = 0;
        for (int i = 0; i < 200_000; i++)
        {
            float x = (float)(r.NextDouble() * 175.9 - 87.29);   // the whole normal range of float results
            double e = Math.Exp(x);
            float v = ManagedMath.Exp(x);
            worst = Math.Max(worst, Math.Abs(v - e) / e);
            Assert.Equal(v, ManagedMath.Exp(new System.Numerics.Vector<float>(x))[0]);   // scalar tail = vector lane
        }
        Assert.True(worst < 2.4e-7, $"largest relative error {worst:E2} (two ulp = 2.4e-7)");
        Assert.Equal(1f, ManagedMath.Exp(0f));
        Assert.Equal(0f, ManagedMath.Exp(float.NegativeInfinity));   // a masked score must weigh nothing
        Assert.Equal(0f, ManagedMath.Exp(-100f));
        Assert.True(float.IsFinite(ManagedMath.Exp(1000f)) && ManagedMath.Exp(1000f) > 3e38f, "large inputs saturate, finite");

        // Softmax over a row with masked entries: the masked ones are 0, the sum is what a double computes.
        var row = new float[] { -1f, float.NegativeInfinity, 0.5f, -3f, float.NegativeInfinity, 2f, -0.25f, 1f, -7f, 0f, float.NegativeInfinity };
        var copy = (float[])row.Clone();
        float sum = ManagedMath.ExpShifted(copy, 2f);
        double expected = row.Where(float.IsFinite).Sum(v => Math.Exp(v - 2.0));
        Assert.True(Math.Abs(sum - expected) < 1e-6 * expected, $"sum {sum} vs {expected}");
        for (int i = 0; i < row.Length; i++)
            Assert.True(float.IsFinite(row[i]) ? Math.Abs(copy[i] - Math.Exp(row[i] - 2.0)) < 3e-7 : copy[i] == 0f, $"element {i}: {copy[i]}");
    }

    [Theory]
    [InlineData("beagle")]
    [InlineData("eagle2")]
    public void Auto_picks_the_managed_kernel_for_small_drafts_and_the_tensor_session_for_large_ones(string arch)
    {
        var small = TestAssets.Stories;
        using var d1 = DraftCheckpoint.Create(DraftConfig.ForTarget(small.Config, arch), small);
        using (var s1 = d1.StartSession(32)) Assert.IsAssignableFrom<IArrayDraftSession>(s1);
        // A step of this draft reads ~1.8M weights (head 4096 x 256 included): past the managed kernel's range.
        var config = new Beagle.Models.ModelConfig { ModelType = "test", Dim = 256, HiddenDim = 688, Layers = 1, Heads = 4, KvHeads = 4, VocabSize = 4096, MaxSeqLen = 64 };
        using var w = Beagle.Models.LlamaWeights.Random(config, seed: 1);
        using var wide = new Beagle.Models.LlamaModel(w);
        using var d2 = DraftCheckpoint.Create(DraftConfig.ForTarget(wide.Config, arch), wide);
        using (var s2 = d2.StartSession(32)) Assert.False(s2 is IArrayDraftSession);
    }
}
