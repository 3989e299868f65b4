using System.Text.Json.Nodes;
using Beagle.Checkpoints;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tests.Infrastructure;
using TorchSharp;
using Xunit;
using static Beagle.Tests.Drafting.DraftTestKit;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Beagle.Tests.Drafting;

/// <summary>Training forwards (mask, NaN guard), reduced vocabulary, config and checkpoints.</summary>
[Collection(DraftingCollection.Name)]
public class DraftModelTests
{
    [Fact]
    public void Beagle_query_i_does_not_see_key_i_but_query_i_plus_1_does()
    {
        using var scope = NewDisposeScope();
        using var draft = (BeagleDraft)NewDraft(DraftConfig.Beagle);
        const int T = 12;
        var seq = Tokens(T, seed: 3);
        using var _ = no_grad();
        var h = TrueStates(seq).unsqueeze(0);                                   // [1, T, D]
        var pos = Range(0, T);
        var mask = BeagleDraft.StrictlyCausalMask(pos, pos);                   // [T, T], key j < query i
        Assert.False(mask[5, 5].item<bool>());
        var q = tensor(seq.Select(t => (long)t).ToArray()).unsqueeze(0);
        var a = draft.ForwardStates(q, h, pos, pos, mask);
        var h2 = h.clone();
        h2[0, 5] += randn(h.shape[2]);                                         // change h_5 only
        var b = draft.ForwardStates(q, h2, pos, pos, mask);
        Assert.Equal(0f, MaxAbsDiff(a[0, 5], b[0, 5]));                      // hhat_5 does not see h_5
        Assert.Equal(0f, MaxAbsDiff(a[0, ..5], b[0, ..5]));
        Assert.True(MaxAbsDiff(a[0, 6], b[0, 6]) > 1e-4);                    // hhat_6 does
    }

    [Fact]
    public void Fully_masked_rows_give_finite_outputs_and_gradients()
    {
        using var scope = NewDisposeScope();
        using var draft = (BeagleDraft)NewDraft(DraftConfig.Beagle);
        const int T = 6;
        var seq = Tokens(T, seed: 4);
        var h = TrueStates(seq).unsqueeze(0).repeat(2, 1, 1);                  // [2, T, D]
        var pos = Range(0, T);
        var mask = BeagleDraft.StrictlyCausalMask(pos, pos).unsqueeze(0).repeat(2, 1, 1);   // [2, T, T]: row 0 is empty
        mask[1, 3] = zeros(T, dtype: ScalarType.Bool);                         // and one more in batch 1
        var q = tensor(seq.Select(t => (long)t).ToArray()).unsqueeze(0).repeat(2, 1);
        var hhat = draft.ForwardStates(q, h, pos, pos, mask);
        Assert.False(hhat.isnan().any().item<bool>());
        draft.Logits(hhat).logsumexp(-1).sum().backward();
        foreach (var (name, p) in draft.named_parameters())
            Assert.True(p.grad is not null && p.grad.isfinite().all().item<bool>(), $"gradient of {name} is missing or not finite");
        // The embedding and LM head are the target's and stay frozen.
        Assert.False(Target.Embedding.requires_grad);
        Assert.DoesNotContain(draft.named_parameters(), p => p.name.Contains("embed") || p.name.Contains("lm_head"));
    }

    [Theory]
    [InlineData(DraftConfig.Beagle)]
    [InlineData(DraftConfig.Eagle2)]
    public void Reduced_vocabulary_logits_equal_the_full_logits_at_the_mapped_ids(string arch)
    {
        using var scope = NewDisposeScope();
        int[] ids = [2, 5, 17, 100, 511, 300];
        using var full = NewDraft(arch, seed: 9);
        using var small = NewDraft(arch, seed: 9, vocab: ids);
        Assert.Equal(ids.Length, small.DraftVocabSize);
        Assert.Equal(ids, small.DraftToTarget);
        Assert.Null(full.DraftToTarget);
        using var _ = no_grad();
        foreach (var ((n1, p1), (n2, p2)) in full.named_parameters().Zip(small.named_parameters()))
            Assert.True(n1 == n2 && MaxAbsDiff(p1, p2) == 0, $"parameter {n1} differs");
        var states = randn(3, Target.Config.Dim);
        var lf = full.Logits(states); var ls = small.Logits(states);
        Assert.Equal(new long[] { 3, ids.Length }, ls.shape);
        Assert.True(MaxAbsDiff(ls, lf.index_select(1, tensor(ids.Select(i => (long)i).ToArray()))) < 1e-5);   // matmul rounding only

        var seq = Tokens(9, seed: 5);
        using var h = TrueStates(seq);
        using var sf = full.StartSession(32); using var ss = small.StartSession(32);
        sf.Commit(seq.AsSpan(0, 8), h.narrow(0, 0, 8)); ss.Commit(seq.AsSpan(0, 8), h.narrow(0, 0, 8));
        var pf = sf.Expand([seq[8]], [8], [-1]); var ps = ss.Expand([seq[8]], [8], [-1]);
        Assert.Equal(new long[] { 1, ids.Length }, ps.shape);
        var expected = F.log_softmax(pf.index_select(1, tensor(ids.Select(i => (long)i).ToArray())), 1);   // renormalised over the ids
        Assert.True(MaxAbsDiff(expected, ps) < 1e-5, $"{MaxAbsDiff(expected, ps)}\n{expected.ToString(TorchSharp.TensorStringStyle.Julia)}\n{ps.ToString(TorchSharp.TensorStringStyle.Julia)}");
    }

    [Fact]
    public void Config_for_the_target_has_its_sizes_and_round_trips_through_json()
    {
        var c = DraftConfig.ForTarget(Target.Config, DraftConfig.Beagle, [1, 2, 3]);
        Assert.Equal((64, 8, 4, 8, 172), (c.Dim, c.Heads, c.KvHeads, c.HeadDim, c.HiddenDim));
        var json = c.ToJson();
        Assert.Contains("\"draft_vocab\"", json);
        Assert.Contains("\"kv_heads\": 4", json);
        var back = DraftConfig.FromJson(json);
        Assert.Equal(c with { DraftVocab = null }, back with { DraftVocab = null });
        Assert.Equal(c.DraftVocab, back.DraftVocab);
        Assert.Throws<InvalidDataException>(() => DraftConfig.FromJson(json.Replace("\"beagle\"", "\"medusa\"")));
        Assert.Throws<InvalidDataException>(() => (c with { KvHeads = 3 }).Validate());
    }

    [Theory]
    [InlineData(DraftConfig.Beagle)]
    [InlineData(DraftConfig.Eagle2)]
    public void Checkpoint_round_trip_gives_identical_outputs(string arch)
    {
        using var scope = NewDisposeScope();
        using var dir = TestAssets.TempDir();
        using var draft = NewDraft(arch, vocab: arch == DraftConfig.Beagle ? [4, 8, 15, 16, 23, 42] : null);
        DraftCheckpoint.Save(draft, dir.Path, new JsonObject { ["lr"] = 3e-4, ["stage"] = 2 });
        Assert.Equal(new[] { "draft.json", "draft.safetensors" }, Directory.GetFiles(dir.Path).Select(Path.GetFileName).Order());
        using var loaded = DraftCheckpoint.Load(dir.Path, Target);
        Assert.Equal(draft.Config.ToJson(), loaded.Config.ToJson());
        Assert.Equal(2, DraftCheckpoint.ReadTraining(dir.Path)["stage"]!.GetValue<int>());
        // Only the draft's own parameters are saved.
        Assert.Equal(draft.state_dict().Keys.Order(), loaded.state_dict().Keys.Order());

        var seq = Tokens(9, seed: 6);
        using var h = TrueStates(seq);
        using var s1 = draft.StartSession(32); using var s2 = loaded.StartSession(32);
        s1.Commit(seq.AsSpan(0, 8), h.narrow(0, 0, 8)); s2.Commit(seq.AsSpan(0, 8), h.narrow(0, 0, 8));
        Assert.Equal(0f, MaxAbsDiff(s1.Expand([seq[8]], [8], [-1]), s2.Expand([seq[8]], [8], [-1])));
        Assert.Equal(0f, MaxAbsDiff(s1.Expand([3, 4], [9, 9], [0, 0]), s2.Expand([3, 4], [9, 9], [0, 0])));
    }

    [Fact]
    public void Loading_against_another_target_is_refused_naming_both_fingerprints()
    {
        using var dir = TestAssets.TempDir();
        using (var draft = NewDraft(DraftConfig.Beagle)) DraftCheckpoint.Save(draft, dir.Path, null);
        using var w = Llama2cCheckpoint.Load(TestAssets.ModelPath);
        using var eps = 0.001.ToScalar();
        using var shifted = w.TokenEmbedding.add(eps, TorchScalars.One);
        using var other = new LlamaModel(new LlamaWeights { Config = w.Config, TokenEmbedding = shifted, Layers = w.Layers, FinalNorm = w.FinalNorm, LmHead = w.LmHead });
        var mine = TargetFingerprint.Of(Target); var theirs = TargetFingerprint.Of(other);
        Assert.NotEqual(mine.EmbeddingSha256, theirs.EmbeddingSha256);
        var e = Assert.Throws<InvalidDataException>(() => DraftCheckpoint.Load(dir.Path, other));
        Assert.Contains(mine.EmbeddingSha256[..12], e.Message);
        Assert.Contains(theirs.EmbeddingSha256[..12], e.Message);
        Assert.Contains("vocab 512 / hidden 64", e.Message);
    }

    [Fact]
    public void Truncated_or_missing_files_are_refused_with_InvalidDataException()
    {
        using var dir = TestAssets.TempDir();
        using (var draft = NewDraft(DraftConfig.Eagle2)) DraftCheckpoint.Save(draft, dir.Path, null);
        var weights = Path.Combine(dir.Path, DraftCheckpoint.WeightsFile);
        var bytes = File.ReadAllBytes(weights);
        File.WriteAllBytes(weights, bytes[..(bytes.Length / 2)]);
        var e = Assert.Throws<InvalidDataException>(() => DraftCheckpoint.Load(dir.Path, Target));
        Assert.Contains("truncated", e.Message);
        File.Delete(weights);
        Assert.Throws<InvalidDataException>(() => DraftCheckpoint.Load(dir.Path, Target));
        File.WriteAllText(Path.Combine(dir.Path, DraftCheckpoint.MetaFile), "{ not json");
        Assert.Throws<InvalidDataException>(() => DraftCheckpoint.Load(dir.Path, Target));
        Directory.Delete(dir.Path, true);
        Assert.Throws<InvalidDataException>(() => DraftCheckpoint.Load(dir.Path, Target));
    }
}
