using Beagle.Decoding;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Decoding;

public class HostFloatsTests
{
    [Fact]
    public void Reads_a_contiguous_tensor_in_place_and_copies_anything_else()
    {
        using var t = arange(0, 12, dtype: ScalarType.Float32).reshape(3, 4);
        using (var h = HostFloats.Of(t))
            Assert.Equal(Enumerable.Range(0, 12).Select(i => (float)i), h.Span.ToArray());
        using (var h = HostFloats.Of(t)) { t[1, 1] = tensor(100f); Assert.Equal(100f, h.Span[5]); }   // a view, not a copy

        using var tt = t.t();                                  // non-contiguous: read through a copy, in logical order
        using (var h = HostFloats.Of(tt)) Assert.Equal(tt.contiguous().data<float>().ToArray(), h.Span.ToArray());
        using var d = t.to(ScalarType.Float64);                // another dtype: converted
        using (var h = HostFloats.Of(d)) Assert.Equal(100f, h.Span[5]);
    }
}
