using Beagle.Decoding;
using Beagle.Drafting.NGram;
using Beagle.Models;
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

    /// <summary>
    /// Generations rent their caches from the model and return them: a reused cache is not cleared, so its old slots must
    /// never be read. Poisoned with NaN (which survives a zero attention weight, and a masked -inf score's zero too), a
    /// reused cache must still give exactly what a fresh, zeroed one gave; plainly and speculatively (tree rows written
    /// past the committed length, then compacted), on the C# forward and on libtorch's.
    /// </summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void A_reused_cache_gives_what_a_fresh_one_gave_even_with_its_old_slots_poisoned(bool torchForward, bool speculative)
    {
        var config = new ModelConfig { ModelType = "test", Dim = 48, HiddenDim = 64, Layers = 2, Heads = 4, KvHeads = 2, VocabSize = 512, MaxSeqLen = 96 };
        using var w = LlamaWeights.Random(config, seed: 11);
        using var model = torchForward ? LlamaModel.WithTorchForward(w) : new LlamaModel(w);
        using var draft = speculative ? new NGramDraft(config.VocabSize) : null;
        var g = new Beagle.Decoding.Generator(model, TestAssets.StoriesTokenizer, draft);
        var o = new GenerationOptions { MaxNewTokens = 40, Speculative = speculative ? new TreeBudget(6, 3, 2).ToOptions() : null };
        int[] Run(int[] prompt) => g.Generate(prompt, o).SelectMany(c => c.TokenIds).ToArray();
        int[] shortPrompt = [1, 7, 7, 9], longPrompt = [1, .. Enumerable.Range(0, 30).Select(i => 20 + i % 6)];

        Assert.Equal(0, model.IdleCaches);
        var fresh = Run(shortPrompt);
        Assert.Equal(40, fresh.Length);
        Assert.Equal(1, model.IdleCaches);          // returned once, and kept
        Run(longPrompt);                           // the reused cache now holds a longer history than the next generation's
        Assert.Equal(1, model.IdleCaches);          // rented and returned: still one
        var cache = model.RentCache();
        Assert.Equal(0, cache.Length);
        using (var nan = TorchSharp.ScalarExtensionMethods.ToScalar(float.NaN)) { foreach (var t in cache.K.Concat(cache.V)) t.fill_(nan); }
        model.ReturnCache(cache);
        Assert.Equal(fresh, Run(shortPrompt));
    }

    [Fact]
    public void Idle_caches_are_bounded_by_memory_and_freed_with_the_model()
    {
        // 2 layers x 2 kv heads x 64 dims x 8,192 slots x 4 bytes x (keys, values) = 16 MiB a cache: 16 fit under the bound.
        var config = new ModelConfig { ModelType = "test", Dim = 128, HiddenDim = 64, Layers = 2, Heads = 2, KvHeads = 2, VocabSize = 16, MaxSeqLen = 8192 };
        using var w = LlamaWeights.Random(config, seed: 1);
        var model = new LlamaModel(w);
        var caches = Enumerable.Range(0, 20).Select(_ => model.RentCache()).ToArray();
        Assert.Equal(16L << 20, caches[0].Bytes);
        foreach (var c in caches) model.ReturnCache(c);
        Assert.Equal((int)(LlamaModel.MaxIdleCacheBytes / caches[0].Bytes), model.IdleCaches);
        var again = model.RentCache();
        Assert.Contains(again, caches);            // reused, not new
        model.ReturnCache(again);
        using (var small = model.NewCache(16)) { }  // a cache of another capacity is the caller's, never pooled
        model.Dispose();
        Assert.Equal(0, model.IdleCaches);
        var late = caches[0];
        model.ReturnCache(late);                   // returned after the model's end: freed, not kept
        Assert.Equal(0, model.IdleCaches);
    }
}
