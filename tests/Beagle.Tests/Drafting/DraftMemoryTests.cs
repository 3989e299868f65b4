using Beagle.Drafting;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Drafting;

/// <summary>
/// What a draft adds to plain decoding, in bytes, checked against sizes worked out from the config alone (an
/// independent count): the draft's own weights and tables, the host copies its sessions share, and one session's buffers.
/// </summary>
public class DraftMemoryTests
{
    [Fact]
    public void A_Beagle_draft_counts_its_own_weights_and_tables_but_not_the_target_tensors_it_reads_in_place()
    {
        var target = TestAssets.Stories;
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, DraftConfig.Beagle), target);
        var c = ((DraftModelBase)draft).Config;
        long d = c.Dim, q = c.QDim, kv = c.KvDim, f = c.HiddenDim;
        long weights = 3 * d + q * d + 2 * kv * d + d * q + 2 * f * d + f * d;   // three norms, wq, wkv, wo, w13, w2
        long rope = 2L * c.MaxPositions * c.HeadDim * sizeof(float) + c.HeadDim * sizeof(long);   // cos, sin, rotary partners
        Assert.Equal(weights * sizeof(float) + rope, draft.WeightBytes);
    }

    [Fact]
    public void A_managed_Beagle_session_counts_its_slots_and_states_and_its_first_start_adds_the_shared_host_weights()
    {
        var target = TestAssets.Stories;
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, DraftConfig.Beagle), target);
        var c = ((DraftModelBase)draft).Config;
        long before = draft.WeightBytes;
        const int capacity = 100;
        using var session = draft.StartSession(capacity);
        Assert.Equal("ManagedBeagleSession", session.GetType().Name);   // the kernel stories260K decodes with
        int round = DraftModelBase.MaxRoundNodes;
        long slots = 2L * c.KvHeads * c.HeadDim * (capacity + round) * sizeof(float);   // keys and values: context + a round
        long states = (long)round * c.Dim * sizeof(float);                              // a round's draft states
        long bookkeeping = 3L * round * sizeof(int);                                    // parents, positions, slots
        Assert.Equal(slots + states + bookkeeping, session.StateBytes);

        // The host copies include the target's embedding and LM head (the managed kernel reads its own copies).
        long vocab = target.Config.VocabSize;
        Assert.True(draft.WeightBytes - before >= 2 * vocab * c.Dim * sizeof(float), $"{draft.WeightBytes - before} bytes of shared session weights");
        long shared = draft.WeightBytes;
        using var second = draft.StartSession(capacity);
        Assert.Equal(shared, draft.WeightBytes);   // built once, shared by every session
    }

    [Fact]
    public void An_EAGLE2_session_counts_its_features_and_tokens_too()
    {
        var target = TestAssets.Stories;
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, DraftConfig.Eagle2), target);
        var c = ((DraftModelBase)draft).Config;
        const int capacity = 64;
        using var session = draft.StartSession(capacity);
        int round = DraftModelBase.MaxRoundNodes;
        long expected = 2L * c.KvHeads * c.HeadDim * (capacity + round) * sizeof(float)   // keys and values
            + (long)capacity * c.Dim * sizeof(float) + (long)round * c.Dim * sizeof(float)  // committed features, a round's outputs
            + (long)capacity * sizeof(int) + 3L * round * sizeof(int);                      // committed tokens, round bookkeeping
        Assert.Equal(expected, session.StateBytes);
    }
}
