using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Decoding;

public class SpeculativeCostsTests
{
    [Fact]
    public void A_round_costs_its_drafting_verification_and_bookkeeping_in_plain_steps()
    {
        var c = new SpeculativeCosts(80, PlainMs: 2, DraftStepMs: 0.5,
            DraftMs: new Dictionary<int, double> { [4] = 1.6 }, VerifyMs: new Dictionary<int, double> { [4] = 5 }, BookkeepingMs: new Dictionary<int, double> { [4] = 0.4 });
        Assert.Equal(7.0, c.RoundMs(4), 12);
        Assert.Equal(3.5, c.RoundInPlainSteps(4), 12);
        Assert.Throws<ArgumentException>(() => c.RoundInPlainSteps(6));   // not timed
    }

    [Fact]
    public void Measures_every_part_of_a_round_of_every_requested_chain_for_a_real_pair()
    {
        var target = TestAssets.Stories;
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, DraftConfig.Beagle), target);
        var costs = SpeculativeCosts.Measure(target, draft, [2, 5], context: 30, runs: 1);
        foreach (var parts in new[] { costs.DraftMs, costs.VerifyMs, costs.BookkeepingMs })
        {
            Assert.Equal([2, 5], parts.Keys.Order());
            Assert.All(parts.Values, v => Assert.True(v > 0));   // each part was timed (drafting too: the draft is real)
        }
        Assert.True(costs.PlainMs > 0 && costs.DraftStepMs > 0);

        // Without a draft nothing is drafted, but verification and bookkeeping still cost.
        var alone = SpeculativeCosts.Measure(target, null, [2], context: 30, runs: 1);
        Assert.Equal(0, alone.DraftStepMs);
        Assert.Equal(0, alone.DraftMs[2]);
        Assert.True(alone.VerifyMs[2] > 0 && alone.BookkeepingMs[2] > 0);
    }

    [Fact]
    public void Rejects_a_context_that_leaves_no_room_and_bad_counts()
    {
        var target = TestAssets.Stories;
        Assert.Throws<ArgumentOutOfRangeException>(() => SpeculativeCosts.Measure(target, null, [9], context: target.Config.MaxSeqLen - 5));
        Assert.Throws<ArgumentOutOfRangeException>(() => SpeculativeCosts.Measure(target, null, [1], context: 10));   // a round verifies at least 2
        Assert.Throws<ArgumentOutOfRangeException>(() => SpeculativeCosts.Measure(target, null, [2], context: 10, runs: 0));
    }
}
