using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Decoding;

public class SpeculativeCostsTests
{
    [Fact]
    public void A_round_costs_its_verification_plus_one_draft_step_per_draft_token_in_plain_steps()
    {
        var c = new SpeculativeCosts(80, PlainMs: 2, new Dictionary<int, double> { [1] = 2, [4] = 5 }, DraftStepMs: 0.5);
        Assert.Equal((5 + 3 * 0.5) / 2, c.RoundInPlainSteps(4), 12);
        Assert.Throws<ArgumentException>(() => c.RoundInPlainSteps(6));   // not timed
    }

    [Fact]
    public void Measures_every_requested_chain_and_the_draft_step_of_a_real_pair()
    {
        var target = TestAssets.Stories;
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, DraftConfig.Beagle), target);
        var costs = SpeculativeCosts.Measure(target, draft, [2, 5], context: 30, runs: 1);
        Assert.Equal([1, 2, 5], costs.VerifyMs.Keys.Order());
        Assert.All(costs.VerifyMs.Values, v => Assert.True(v > 0));
        Assert.Equal(costs.VerifyMs[1], costs.PlainMs);
        Assert.True(costs.DraftStepMs > 0);
        Assert.Equal(0, SpeculativeCosts.Measure(target, null, [2], context: 30, runs: 1).DraftStepMs);
    }

    [Fact]
    public void Rejects_a_context_that_leaves_no_room_and_bad_counts()
    {
        var target = TestAssets.Stories;
        Assert.Throws<ArgumentOutOfRangeException>(() => SpeculativeCosts.Measure(target, null, [9], context: target.Config.MaxSeqLen - 5));
        Assert.Throws<ArgumentOutOfRangeException>(() => SpeculativeCosts.Measure(target, null, [0], context: 10));
        Assert.Throws<ArgumentOutOfRangeException>(() => SpeculativeCosts.Measure(target, null, [2], context: 10, runs: 0));
    }
}
