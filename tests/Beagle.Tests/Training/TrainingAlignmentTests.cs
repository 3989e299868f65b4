using Beagle.Drafting;
using Beagle.Tests.Infrastructure;
using Beagle.Training;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Training;

/// <summary>
/// The training-time acceptance estimate by depth must mean what the decoder means by depth: the query at depth i
/// (stage-1 window offset i) is the token at position q, it sees the true states h_0..h_{q-i} only, and it must agree
/// with the target's argmax at q (softmax(LM head(h_q)) is the distribution of t_{q+1}). Checked against an
/// independent code path: one forward per query over a truncated key sequence, no mask at all.
/// </summary>
public class TrainingAlignmentTests
{
    [Fact]
    public void StageOneAgreementByDepthEqualsQueriesOverTruncatedContexts()
    {
        const int B = 4, T = 48, k = 5;
        var target = TestAssets.Stories;
        var docs = TextSources.SplitPlainText(File.ReadAllText(TestAssets.TinyStories)).Take(30);
        var seqs = SequencePacker.Pack(SequencePacker.Tokenize(docs, TestAssets.StoriesTokenizer), T, B);
        var tokens = tensor(seqs.SelectMany(s => s.Select(x => (long)x)).ToArray(), [B, T]);
        var states = target.HiddenStates(tokens);                                                   // [B, T, D]
        using var tmp = TestAssets.TempDir();
        var trainer = DraftTrainer.Create(target, TestAssets.StoriesTokenizer,
            new TrainingOptions { OutputDir = tmp.Path, Generate = 1, WindowK = k, NoiseStd = 0 });
        manual_seed(3);
        using var draft = (BeagleDraft)DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, DraftConfig.Beagle), target);

        // A briefly trained draft, so that agreements are far from 0 and differ between depths (an untrained draft
        // agrees almost nowhere and would let any misalignment pass).
        using (var opt = new AdamW(draft.parameters().Where(p => p.requires_grad), lr: 3e-3, beta1: 0.9, beta2: 0.999))
            for (int i = 0; i < 40; i++)
            {
                using var scope = NewDisposeScope();
                opt.zero_grad();
                trainer.RunStep(draft, tokens, states, 1, i);
                opt.step();
            }

        // Independent: agree[q, i] for the query at q seeing h_0..h_{q-i}, fully visible keys.
        var targetArgmax = target.Logits(states).argmax(-1);                                         // [B, T]
        var agree = new double[T, k + 1];
        using (no_grad())
            for (int q = 1; q < T; q++)
                for (int i = 1; i <= Math.Min(k, q); i++)
                {
                    using var scope = NewDisposeScope();
                    int n = q - i + 1;
                    var hhat = draft.ForwardStates(tokens.narrow(1, q, 1), states.narrow(1, 0, n),
                        tensor(new long[] { q }), arange(n, dtype: ScalarType.Int64), ones(1, n, dtype: ScalarType.Bool));   // [B, 1, D]
                    agree[q, i] = draft.Logits(hhat).argmax(-1).squeeze(1).eq(targetArgmax.select(1, q)).sum().item<long>();
                }

        int depthsDiffer = 0;
        for (long step = 0; step < 6; step++)
        {
            StepStats st;
            using (var scope = NewDisposeScope()) st = trainer.RunStep(draft, tokens, states, 1, step);
            // The step drew a window offset we do not know: the stats must equal the independent sums for one of them.
            // The two paths compute the same attention with different shapes (a block mask over the whole sequence vs
            // a truncated key sequence), so float rounding may flip an argmax that is a near-tie: at most one query
            // per depth may differ. A misalignment (a leaked or missing state) moves whole depths by far more.
            bool matched = false;
            var closest = "";
            for (int offset = 0; offset < k && !matched; offset++)
            {
                var sums = new double[k]; var counts = new double[k];
                for (int q = 0; q < T; q++)
                {
                    if (Masks.WindowEnd(q, k, offset) < 0) continue;
                    int i = Masks.OffsetInWindow(q, k, offset);
                    sums[i - 1] += agree[q, i]; counts[i - 1] += B;
                }
                matched = sums.Zip(st.AgreementByDepth).All(p => Math.Abs(p.First - p.Second) <= 1) && counts.SequenceEqual(st.CountByDepth);
                closest += $" offset {offset}: {string.Join(" ", sums)};";
            }
            Assert.True(matched, $"step {step}: reported agreement {string.Join(" ", st.AgreementByDepth)} matches no window offset ({closest})");
            if (st.AgreementByDepth.Distinct().Count() > 1) depthsDiffer++;
        }
        Assert.True(depthsDiffer > 0, "agreements are identical at every depth: the test cannot tell depths apart");
    }
}
