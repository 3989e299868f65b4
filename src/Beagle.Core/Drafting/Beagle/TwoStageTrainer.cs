using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tokenization;
using static TorchSharp.torch;

namespace Beagle.Training;

/// <summary>
/// Beagle's Two-Stage Block-Attention Training (docs/method.md, "Two-stage block-attention training").
/// Stage 1: one forward with the inverse block mask; every valid query is trained on its own look-ahead.
/// Stage 2: s simulated drafting steps over keys [true states ; draft-state slots]; at step i only the offset-i
/// queries count (weight beta_i = k - i + 1) and their outputs are written into their slots for the later steps.
/// Loss per query: CE weight × soft CE + vloss weight × SmoothL1(hhat_q, h_q); noise N(0, std) on the key states.
/// Normalisation [ours]: stage 1 sums over the offsets of a window and averages over windows (Σ_queries / (N_valid / k));
/// stage 2 averages each step's term over its windows, then sums the steps with their betas.
/// </summary>
public sealed class TwoStageTrainer(LlamaModel target, ITokenizer tokenizer, TrainingOptions options) : DraftTrainer(target, tokenizer, options)
{
    protected override int Depths => Options.WindowK;

    protected override StepStats Step(DraftModelBase draft, Tensor tokens, Tensor states, int stage, long globalStep, CancellationToken stopping)
        => stage == 1 ? Stage1(draft, tokens, states, globalStep, stopping) : Stage2(draft, tokens, states, globalStep, Options.SimSteps, Options.FullBackprop, stopping);

    internal override StepStats BenchStep(DraftModelBase draft, Tensor tokens, Tensor states, long globalStep, int simSteps, bool fullBackprop) =>
        Stage2(draft, tokens, states, globalStep, simSteps, fullBackprop);

    static BeagleDraft AsBeagle(DraftModelBase d) => d as BeagleDraft ?? throw new ArgumentException($"expected a Beagle draft, got {d.GetType().Name}");

    StepStats Stage1(DraftModelBase model, Tensor tokens, Tensor states, long globalStep, CancellationToken stopping = default)
    {
        var draft = AsBeagle(model);
        int B = (int)tokens.shape[0], T = (int)tokens.shape[1], k = Options.WindowK;
        int offset = StepRandom(globalStep, 1).Next(k);
        using var gen = StepGenerator(globalStep, 2);
        var pos = arange(T, dtype: ScalarType.Int64, device: Target.Device);
        var keys = Losses.GaussianNoise(states, Options.NoiseStd, gen);                           // [B, T, D]
        var hhat = draft.ForwardStates(tokens, keys, pos, pos, Masks.InverseBlock(T, k, offset, Target.Device));   // [B, T, D]

        var valid = Masks.ValidQueries(T, k, offset);
        var idx = Enumerable.Range(0, T).Where(q => valid[q]).Select(q => (long)q).ToArray();
        var offsets = idx.Select(q => Masks.OffsetInWindow((int)q, k, offset) - 1).ToArray();   // 0-based depth per query
        var (ce, vl, agree) = QueryLosses(draft, hhat, states, idx);                             // each [B, n]
        double windows = B * idx.Length / (double)k;
        var loss = Losses.Scaled(Losses.Scaled(ce.sum(), Options.EffectiveCeWeight).add(Losses.Scaled(vl.sum(), Options.EffectiveVLossWeight), TorchScalars.One), 1.0 / windows);
        ThrowIfStopping(stopping, globalStep, 0);                                                 // the backward costs as much as the forward
        loss.backward();

        var a = agree.sum(dim: 0).data<float>().ToArray();                                            // [n] summed over the batch
        var agreeByDepth = new double[k]; var countByDepth = new double[k];
        for (int i = 0; i < idx.Length; i++) { agreeByDepth[offsets[i]] += a[i]; countByDepth[offsets[i]] += B; }
        return new StepStats(loss.item<float>(), ce.mean().item<float>(), vl.mean().item<float>(), agreeByDepth, countByDepth);
    }

    /// <summary>
    /// Stage 2 with <paramref name="simSteps"/> steps. Detached (default): each step's outputs are copied, without
    /// graph, into the slot buffer and its loss is back-propagated at once, so only one step's graph is alive; memory
    /// does not grow with the number of steps. Full back-propagation keeps the slots in the graph and runs one backward.
    /// Public for <see cref="TrainBench"/>.
    /// </summary>
    internal StepStats Stage2(DraftModelBase model, Tensor tokens, Tensor states, long globalStep, int simSteps, bool fullBackprop,
        CancellationToken stopping = default)
    {
        var draft = AsBeagle(model);
        int B = (int)tokens.shape[0], T = (int)tokens.shape[1], D = (int)states.shape[2], k = Options.WindowK;
        int offset = StepRandom(globalStep, 1).Next(k);
        using var gen = StepGenerator(globalStep, 2);
        var pos = arange(T, dtype: ScalarType.Int64, device: Target.Device);
        var keyPos = cat([pos, pos]);                                                             // [2T]: slot p sits at position p
        var noisy = Losses.GaussianNoise(states, Options.NoiseStd, gen);                          // [B, T, D]
        var slots = zeros(B, T, D, device: Target.Device);                                        // draft-state slots
        double lossSum = 0, ceSum = 0, vlSum = 0; int terms = 0;
        var agreeByDepth = new double[k]; var countByDepth = new double[k];
        Tensor? total = null;
        for (int s = 1; s <= simSteps; s++)
        {
            var idx = Masks.PositionsAtOffset(T, k, offset, s);
            if (idx.Length == 0) continue;
            if (s > 1) ThrowIfStopping(stopping, globalStep, s - 1);                               // between simulated steps
            using var stepScope = NewDisposeScope();
            var keys = cat([noisy, slots], 1);                                                    // [B, 2T, D]
            var hhat = draft.ForwardStates(tokens, keys, pos, keyPos, Masks.Simulation(T, k, offset, s, Target.Device));   // [B, T, D]
            var (ce, vl, agree) = QueryLosses(draft, hhat, states, idx);                         // [B, n_s]
            double beta = k - s + 1;
            var loss = Losses.Scaled(Losses.Scaled(ce.mean(), Options.EffectiveCeWeight).add(Losses.Scaled(vl.mean(), Options.EffectiveVLossWeight), TorchScalars.One), beta);
            var idxT = tensor(idx, device: Target.Device);
            if (fullBackprop)
            {
                total = total is null ? loss : total.add(loss, TorchScalars.One);
                total.MoveToOuterDisposeScope();
                slots = slots.index_copy(1, idxT, hhat.index_select(1, idxT)).MoveToOuterDisposeScope();   // stays in the graph
            }
            else
            {
                loss.backward();
                using (no_grad()) slots.index_copy_(1, idxT, hhat.index_select(1, idxT).detach());
            }
            lossSum += loss.item<float>(); ceSum += ce.mean().item<float>(); vlSum += vl.mean().item<float>(); terms++;
            agreeByDepth[s - 1] += agree.sum().item<float>(); countByDepth[s - 1] += agree.numel();
        }
        if (total is not null)
        {
            ThrowIfStopping(stopping, globalStep, simSteps);
            total.backward();
        }
        return new StepStats(lossSum, ceSum / Math.Max(1, terms), vlSum / Math.Max(1, terms), agreeByDepth, countByDepth);
    }

    /// <summary>Per-query soft CE, SmoothL1 and top-1 agreement at positions idx: hhat, states [B, T, D] → each [B, n].</summary>
    (Tensor Ce, Tensor VLoss, Tensor Agree) QueryLosses(BeagleDraft draft, Tensor hhat, Tensor states, long[] idx)
    {
        var idxT = tensor(idx, device: Target.Device);
        var h = hhat.index_select(1, idxT);                                                      // [B, n, D]
        var truth = states.index_select(1, idxT);                                                // [B, n, D]
        var p = Losses.TargetProbs(Target, truth, KeptIds);                                      // [B, n, Vd]
        var q = draft.Logits(h);                                                                 // [B, n, Vd]
        long B = h.shape[0], n = h.shape[1], D = h.shape[2], V = q.shape[2];
        var ce = Losses.SoftCrossEntropy(q.reshape(-1, V), p.reshape(-1, V)).view(B, n);
        var vl = Losses.SmoothL1PerRow(h.reshape(-1, D), truth.reshape(-1, D)).view(B, n);
        var agree = Losses.Top1Agreement(q.detach(), p).view(B, n);
        return (ce, vl, agree);
    }
}
