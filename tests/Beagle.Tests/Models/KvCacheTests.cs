using Beagle.Tests.Infrastructure;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Models;

public class KvCacheTests
{
    [Fact]
    public void KeepSlots_moves_the_kept_slots_of_every_layer_head_and_dimension_into_place()
    {
        var model = TestAssets.Stories;
        using var cache = model.NewCache(64);
        var tokens = Enumerable.Range(0, 20).Select(i => 10 + i).ToArray();
        using (model.Forward(cache, tokens, Enumerable.Range(0, 20).ToArray())) { }   // slots 0..19 hold real keys/values
        using var k = stack(cache.K.Select(t => t.clone()).ToArray());   // [L, kvH, hd, capacity] before
        using var v = stack(cache.V.Select(t => t.clone()).ToArray());

        long[] kept = [12, 13, 15, 19];   // a tree path after a 12-slot context: root, then nodes 1, 3 and 7
        cache.KeepSlots(12, kept);

        Assert.Equal(16, cache.Length);
        for (int l = 0; l < cache.K.Length; l++)
        {
            Assert.True(cache.K[l].narrow(2, 0, 12).eq(k[l].narrow(2, 0, 12)).all().item<bool>(), "the context is untouched");
            for (int i = 0; i < kept.Length; i++)
            {
                Assert.True(cache.K[l].select(2, 12 + i).eq(k[l].select(2, kept[i])).all().item<bool>(), $"layer {l}: key of slot {kept[i]} at {12 + i}");
                Assert.True(cache.V[l].select(2, 12 + i).eq(v[l].select(2, kept[i])).all().item<bool>(), $"layer {l}: value of slot {kept[i]} at {12 + i}");
            }
        }
        Assert.Throws<ArgumentException>(() => cache.KeepSlots(12, [14, 13]));            // not ascending
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.KeepSlots(12, [11, 13]));  // before start
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.KeepSlots(12, [12, 16]));  // past Length
    }
}
