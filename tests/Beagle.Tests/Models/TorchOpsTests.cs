using Beagle.Models;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Models;

/// <summary><see cref="TorchOps"/> against the same product written with separate ops.</summary>
public class TorchOpsTests
{
    [Theory]
    [InlineData(4, 12, 16, 86)]   // the target's verification shape (kvH, G*T, hd, S)
    [InlineData(3, 5, 5, 5)]      // square shapes: argument orders that are wrong still compute something here
    public void MaskedScores_equals_bmm_plus_mask(int b, int m, int hd, int s)
    {
        manual_seed(7);
        using var q = randn(b, m, hd); using var k = randn(b, s, hd);
        using var mask = randn(m, s);                      // broadcast over the batch, as the model passes it
        mask[0, 0] = float.NegativeInfinity;               // masked entries stay -inf
        using var expected = q.bmm(k.transpose(1, 2)).add(mask.unsqueeze(0));
        using var actual = TorchOps.MaskedScores(mask, q, k.transpose(1, 2));
        Assert.Equal(expected.shape, actual.shape);
        Assert.True(float.IsNegativeInfinity(actual[1, 0, 0].item<float>()));
        using var finite = isfinite(expected);
        var diff = (expected - actual).abs().masked_fill(finite.logical_not(), 0).max().item<float>();
        Assert.True(diff < 1e-5f, $"max |difference| {diff}");
    }
}
