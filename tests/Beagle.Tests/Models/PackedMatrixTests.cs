using Beagle.Compute;
using Beagle.Models;
using Xunit;

namespace Beagle.Tests.Models;

/// <summary><see cref="PackedMatrix"/> against a plain triple loop: every row-block size, partial panels, odd K, addends.</summary>
public class PackedMatrixTests
{
    static float[] Random(Random rng, int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();

    static float[] Reference(float[] x, float[] w, float[]? addend, int m, int k, int n)
    {
        var y = new float[m * n];
        for (int r = 0; r < m; r++)
            for (int c = 0; c < n; c++)
            {
                double acc = addend?[r * n + c] ?? 0;
                for (int i = 0; i < k; i++) acc += (double)x[r * k + i] * w[i * n + c];
                y[r * n + c] = (float)acc;
            }
        return y;
    }

    static void AssertClose(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-4f * (1 + Math.Abs(expected[i])), $"{what}: element {i}: expected {expected[i]}, got {actual[i]}");
    }

    [Theory]
    [InlineData(64, 64)]
    [InlineData(7, 5)]      // narrower than one panel
    [InlineData(33, 35)]    // odd K (the unrolled kernels' remainder), a partial last panel
    [InlineData(172, 48)]
    public void Matches_a_plain_product_for_every_row_count(int k, int n)
    {
        var rng = new Random(k * 1000 + n);
        var w = Random(rng, k * n);
        var packed = new PackedMatrix(w, k, n);
        for (int m = 1; m <= 13; m++)
        {
            var x = Random(rng, m * k);
            var y = new float[m * n];
            Array.Fill(y, float.NaN);   // every output must be written
            packed.Multiply(x, m, y);
            AssertClose(Reference(x, w, null, m, k, n), y, $"[{m}x{k}]·[{k}x{n}]");

            var addend = Random(rng, m * n);
            var y2 = new float[m * n];
            packed.Multiply(x, m, y2, addend);
            AssertClose(Reference(x, w, addend, m, k, n), y2, $"addend + [{m}x{k}]·[{k}x{n}]");

            var inPlace = (float[])addend.Clone();
            packed.Multiply(x, m, inPlace, inPlace);
            AssertClose(Reference(x, w, addend, m, k, n), inPlace, $"in place, [{m}x{k}]·[{k}x{n}]");
        }
    }

    [Fact]
    public void Panel_ranges_together_make_the_whole_product()
    {
        var rng = new Random(11);
        int m = 7, k = 30, n = 3 * PackedMatrix.Panel + 5;   // four panels, the last partial
        var w = Random(rng, k * n); var x = Random(rng, m * k); var addend = Random(rng, m * n);
        var packed = new PackedMatrix(w, k, n);
        Assert.Equal(4, packed.PanelCount);
        var y = new float[m * n];
        packed.Multiply(x, m, y, addend, firstPanel: 0, panels: 1);
        packed.Multiply(x, m, y, addend, firstPanel: 1, panels: 2);
        packed.Multiply(x, m, y, addend, firstPanel: 3, panels: 1);
        AssertClose(Reference(x, w, addend, m, k, n), y, "panels 0 | 1-2 | 3");
        Assert.Throws<ArgumentOutOfRangeException>(() => packed.Multiply(x, m, y, addend, firstPanel: 3, panels: 2));
    }

    [Fact]
    public void Writes_only_the_rows_asked_for()
    {
        var rng = new Random(9);
        var packed = new PackedMatrix(Random(rng, 20 * 21), 20, 21);
        var y = new float[5 * 21];
        Array.Fill(y, 42f);
        packed.Multiply(Random(rng, 3 * 20), 3, y);
        Assert.All(y.Skip(3 * 21), v => Assert.Equal(42f, v));
    }

    [Fact]
    public void Rejects_bad_shapes()
    {
        Assert.Throws<ArgumentException>(() => new PackedMatrix(new float[10], 3, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => new PackedMatrix([], 0, 4));
        var packed = new PackedMatrix(new float[12], 3, 4);
        Assert.Throws<ArgumentException>(() => packed.Multiply(new float[5], 2, new float[8]));             // x too short
        Assert.Throws<ArgumentException>(() => packed.Multiply(new float[6], 2, new float[7]));             // y too short
        Assert.Throws<ArgumentException>(() => packed.Multiply(new float[6], 2, new float[8], new float[7])); // addend too short
        Assert.Throws<ArgumentOutOfRangeException>(() => packed.Multiply(new float[6], 0, new float[8]));
    }
}

/// <summary>Large products (feature extraction, long prefills) are split by rows across the torch threads.</summary>
[Collection(Beagle.Tests.Decoding.TimingCollection.Name)]   // changes the global thread count: runs alone
public class ParallelProductTests
{
    [Theory]
    [InlineData(false, 2, 96)]   // stories260K: products split by column panels
    [InlineData(true, 8, 64)]    // a model 48 wide: its 3-panel output projection is split by rows
    public void Hidden_states_are_the_same_with_one_and_two_threads(bool narrow, int batch, int length)
    {
        using var owned = narrow ? NarrowModel() : null;
        var model = owned ?? Infrastructure.TestAssets.Stories;
        using var tokens = TorchSharp.torch.randint(0, model.Config.VocabSize, [batch, length], dtype: TorchSharp.torch.ScalarType.Int64,
            generator: new TorchSharp.torch.Generator(7));
        int before = TorchSharp.torch.get_num_threads();
        try
        {
            TorchSharp.torch.set_num_threads(1);
            using var one = model.HiddenStates(tokens);
            TorchSharp.torch.set_num_threads(2);   // above the split threshold (2^20 multiply-adds)
            using var two = model.HiddenStates(tokens);
            // A row's arithmetic does not depend on which thread computes it, so the split is exact.
            using var diff = (one - two).abs().max();
            Assert.Equal(0f, diff.item<float>());
        }
        finally { TorchSharp.torch.set_num_threads(before); }
    }

    [Theory]
    [InlineData(4, 256, 1024)]   // many panels: split by column panels
    [InlineData(24, 2048, 40)]   // three panels, many rows: split by rows
    public void Array_products_are_the_same_with_one_and_two_threads_and_add_in_place(int n, int k, int cols)
    {
        var r = new Random(n + k + cols);
        var w = Enumerable.Range(0, k * cols).Select(_ => (float)r.NextDouble() - 0.5f).ToArray();
        var x = Enumerable.Range(0, n * k).Select(_ => (float)r.NextDouble() - 0.5f).ToArray();
        var residual = Enumerable.Range(0, n * cols).Select(_ => (float)r.NextDouble()).ToArray();
        var packed = new PackedMatrix(w, k, cols);
        int before = TorchSharp.torch.get_num_threads();
        try
        {
            TorchSharp.torch.set_num_threads(1);
            var one = (float[])residual.Clone();
            packed.Multiply(x, n, one, one);                 // in place: one = residual + x·W
            TorchSharp.torch.set_num_threads(2);             // above the split threshold (2^20 multiply-adds)
            var two = (float[])residual.Clone();
            packed.Multiply(x, n, two, two);
            Assert.Equal(one, two);
            var fresh = new float[n * cols];
            packed.Multiply(x, n, fresh, null);
            for (int i = 0; i < n; i++)
                for (int c = 0; c < cols; c++)
                {
                    double e = residual[i * cols + c]; for (int j = 0; j < k; j++) e += (double)x[i * k + j] * w[j * cols + c];
                    Assert.True(Math.Abs(one[i * cols + c] - e) < 1e-3, $"[{i}, {c}]: {one[i * cols + c]} vs {e}");
                    Assert.True(Math.Abs(one[i * cols + c] - residual[i * cols + c] - fresh[i * cols + c]) < 1e-4, $"no-addend product [{i}, {c}]");
                }
        }
        finally { TorchSharp.torch.set_num_threads(before); }
    }

    static LlamaModel NarrowModel()
    {
        var config = new ModelConfig { ModelType = "test", Dim = 48, HiddenDim = 64, Layers = 2, Heads = 4, KvHeads = 2, VocabSize = 64, MaxSeqLen = 96 };
        using var w = LlamaWeights.Random(config, seed: 2);
        return new LlamaModel(w);
    }
}
