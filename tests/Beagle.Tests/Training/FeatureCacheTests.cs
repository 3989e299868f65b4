using Beagle.Checkpoints;
using Beagle.Models;
using Beagle.Tests.Infrastructure;
using Beagle.Training;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Training;

public class FeatureCacheTests
{
    static List<int[]> Sequences(int n, int T, int skipDocs = 0)
    {
        var docs = TextSources.SplitPlainText(File.ReadAllText(TestAssets.TinyStories)).Skip(skipDocs).Take(40);
        return SequencePacker.Pack(SequencePacker.Tokenize(docs, TestAssets.StoriesTokenizer), T, n);
    }

    [Fact]
    public void CacheIsReusedWhenNothingChangedAndRebuiltWhenDataOrTargetChange()
    {
        using var tmp = TestAssets.TempDir();
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        var seqs = Sequences(6, 32);
        Assert.Equal(6, seqs.Count);

        var first = FeatureCache.Open(tmp.Path, target, tok, seqs, batchSize: 4, shardSize: 4);
        Assert.False(first.Reused);
        Assert.Equal(2, first.ShardCount);

        var again = FeatureCache.Open(tmp.Path, target, tok, seqs, batchSize: 4, shardSize: 4);
        Assert.True(again.Reused);
        Assert.Equal(first.Directory, again.Directory);

        var otherData = FeatureCache.Open(tmp.Path, target, tok, Sequences(6, 32, skipDocs: 5), batchSize: 4, shardSize: 4);
        Assert.False(otherData.Reused);
        Assert.NotEqual(first.Directory, otherData.Directory);

        // A target whose inner layer differs (same embedding): the fingerprint's probe must notice.
        using var w = Llama2cCheckpoint.Load(TestAssets.ModelPath);
        using var factor = 1.01.ToScalar();
        using (no_grad()) w.Layers[1].W2.mul_(factor);
        using var changed = new LlamaModel(w);
        var otherTarget = FeatureCache.Open(tmp.Path, changed, tok, seqs, batchSize: 4, shardSize: 4);
        Assert.False(otherTarget.Reused);
        Assert.NotEqual(first.Directory, otherTarget.Directory);
    }

    [Fact]
    public void StoredStatesMatchTheTargetToHalfPrecisionAndBatchesCoverEverySequenceOnce()
    {
        using var tmp = TestAssets.TempDir();
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        var seqs = Sequences(7, 32);
        var cache = FeatureCache.Open(tmp.Path, target, tok, seqs, batchSize: 3, shardSize: 3);
        var (tokens, states) = cache.ReadShard(1);
        var ids = tensor(seqs.Skip(3).Take(3).SelectMany(s => s.Select(x => (long)x)).ToArray(), [3, 32]);
        Assert.True(tokens.eq(ids).all().item<bool>());
        using var h = target.HiddenStates(ids);
        Assert.True(states.allclose(h, rtol: 2e-3, atol: 2e-3));

        var seen = new List<string>();
        foreach (var (_, bt, bs) in cache.Batches(2, seed: 5, epoch: 0))
        {
            Assert.Equal([2L, 32L, 64L], bs.shape);
            for (int i = 0; i < 2; i++) seen.Add(string.Join(",", bt[i].data<long>().ToArray()));
            bt.Dispose(); bs.Dispose();
        }
        Assert.Equal(6, seen.Count);                     // 7 sequences, batch 2: the last incomplete batch is dropped
        Assert.Equal(6, seen.Distinct().Count());
        // Resuming at batch 2 gives exactly the tail of the same epoch.
        var tail = cache.Batches(2, seed: 5, epoch: 0, startBatch: 2).Select(b => string.Join(",", b.Tokens[0].data<long>().ToArray())).ToList();
        Assert.Equal(seen[4], tail[0]);
    }

    [Fact]
    public void TextSourcesReadPlainJsonlAndChatRecords()
    {
        using var tmp = TestAssets.TempDir();
        File.WriteAllText(tmp.File("a.txt"), "one story.\n\nanother\nstory.\n \nthird");
        Assert.Equal(["one story.", "another\nstory.", "third"], TextSources.ReadDocuments(tmp.File("a.txt")));
        File.WriteAllText(tmp.File("b.txt"), "x\n\ny<|endoftext|>z");
        Assert.Equal(["x\n\ny", "z"], TextSources.ReadDocuments(tmp.File("b.txt")));
        File.WriteAllLines(tmp.File("c.jsonl"), [
            """{"text": "plain"}""",
            """{"question_id": 1, "turns": ["Hi?", "More?"]}""",
            """{"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}""",
        ]);
        Assert.Equal(["plain", "User: Hi?\nUser: More?", "User: Q\nAssistant: A"], TextSources.ReadDocuments(tmp.File("c.jsonl")));
    }
}
