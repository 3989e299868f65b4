using Beagle.Drafting;
using Xunit;
using static Beagle.Tests.Drafting.DraftTestKit;

namespace Beagle.Tests.Drafting;

/// <summary>
/// Sequences decoded together draft their chains in lockstep, two sessions' steps per pass over the draft's weights
/// (DraftTree.BuildChains over IPairedDraftSession). A sequence must draft exactly what it drafts alone: its proposals,
/// and under sampling the draft probabilities its acceptance draws against, may not depend on who shares its rounds.
/// Checked bit for bit against the single-session path, on the bundled (trained) stories260K Beagle draft and on a
/// random-weight one.
/// </summary>
[Collection(DraftingCollection.Name)]
public sealed class LockstepDraftingTests
{
    static IDraftModel Draft(bool trained) => trained
        ? DraftCheckpoint.Load(Path.Combine(AppContext.BaseDirectory, "models", "stories260K", "beagle"), Target)
        : NewDraft("beagle");

    static IDraftSession Session(IDraftModel draft, int[] context)
    {
        var s = draft.StartSession(96);
        using var h = TrueStates(context);
        s.Commit(context, h);
        Assert.IsAssignableFrom<IPairedDraftSession>(s.ArrayPath);   // the kernel that pairs (small drafts on the CPU)
        return s;
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Chains_drafted_in_lockstep_are_the_chains_drafted_alone(bool trained)
    {
        using var draft = (IDisposable)Draft(trained);
        var model = (IDraftModel)draft;
        // Five sequences: two pairs and one alone per pass; different contexts, lengths and floors, so chains end at
        // different steps (then the pairs form anew from the chains still going).
        var contexts = Enumerable.Range(0, 5).Select(i => Tokens(6 + 9 * i, seed: 40 + i)).ToArray();
        int[] lengths = [6, 3, 8, 5, 1];
        float[] floors = [float.NegativeInfinity, float.NegativeInfinity, MathF.Log(0.2f), float.NegativeInfinity, float.NegativeInfinity];
        int[] roots = [17, 201, 45, 300, 88];

        var alone = new (int[] Tokens, int Steps)[5];
        for (int i = 0; i < 5; i++)
        {
            using var s = Session(model, contexts[i]);
            int steps = 0;
            var tree = DraftTree.BuildChain(s, model.DraftToTarget, roots[i], contexts[i].Length, lengths[i], ref steps, floors[i]);
            alone[i] = (tree.Tokens.ToArray(), steps);
        }

        var sessions = contexts.Select(c => Session(model, c)).ToArray();
        try
        {
            var jobs = Enumerable.Range(0, 5).Select(i => new DraftTree.ChainJob(new DraftTree(), (IPairedDraftSession)sessions[i].ArrayPath!,
                model.DraftToTarget, roots[i], contexts[i].Length, lengths[i], floors[i])).ToArray();
            DraftTree.BuildChains(jobs);
            for (int i = 0; i < 5; i++)
            {
                Assert.Equal(alone[i].Tokens, jobs[i].Tree.Tokens.ToArray());
                Assert.Equal(alone[i].Steps, jobs[i].Steps);
                Assert.True(jobs[i].Tree.IsChain);
            }
            Assert.Contains(Enumerable.Range(0, 5), i => jobs[i].Tree.Count < lengths[i] + 1);   // some chain stopped early (floor or no proposal)
            Assert.Contains(jobs, j => j.Tree.Count > 3);                                      // and some went deep
        }
        finally { foreach (var s in sessions) s.Dispose(); }
    }

    [Fact]
    public void A_paired_step_gives_each_session_its_own_step_bit_for_bit_and_refuses_strangers()
    {
        using var draft = (IDisposable)Draft(trained: true);
        var model = (IDraftModel)draft;
        int[] a = Tokens(20, 1), b = Tokens(33, 2);
        using var sa = Session(model, a); using var sb = Session(model, b);
        using var ra = Session(model, a); using var rb = Session(model, b);
        var pa = (IPairedDraftSession)sa.ArrayPath!; var pb = (IPairedDraftSession)sb.ArrayPath!;
        var ia = (IArrayDraftSession)ra.ArrayPath!; var ib = (IArrayDraftSession)rb.ArrayPath!;
        // Two steps each: the second sees the first's draft state (its K/V slot is made lazily).
        int[] tokA = [5, 99], tokB = [300, 7];
        for (int d = 0; d < 2; d++)
        {
            var rowA = pa.ExpandPair(tokA[d], a.Length + d, d - 1, pb, tokB[d], b.Length + d, d - 1).ToArray();
            var rowB = pb.LastRow.ToArray();
            var refA = ia.ExpandToBuffer([tokA[d]], [a.Length + d], [d - 1]).ToArray();
            var refB = ib.ExpandToBuffer([tokB[d]], [b.Length + d], [d - 1]).ToArray();
            Assert.Equal(refA, rowA);   // exact float equality
            Assert.Equal(refB, rowB);
            Assert.NotEqual(rowA, rowB);
        }

        using var other = NewDraft("beagle");
        using var stranger = Session(other, a);
        Assert.False(pa.CanPairWith((IPairedDraftSession)stranger.ArrayPath!));   // another draft's weights
        Assert.Throws<ArgumentException>(() => pa.ExpandPair(1, a.Length, -1, (IPairedDraftSession)stranger.ArrayPath!, 1, a.Length, -1));
    }
}
