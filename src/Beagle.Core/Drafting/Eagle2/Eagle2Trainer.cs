using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tokenization;
using static TorchSharp.torch;

namespace Beagle.Training;

/// <summary>
/// The EAGLE-2 baseline (docs/method.md, "EAGLE-2 baseline"): entry j = (t_{j+1}, f_j) predicts f_{j+1} (and through the LM
/// head t_{j+2}); loss = vloss weight (1.0) × SmoothL1(fhat_j, f_{j+1}) + CE weight (0.1) × soft CE against
/// softmax(LM head(f_{j+1})), averaged over entries; uniform feature noise (rand - 0.5) × 0.2.
///
/// With <see cref="TrainingOptions.EagleTttSteps"/> r &gt; 1 it unrolls a training-time test (EAGLE-3/HASS style):
/// step u (0-based) feeds the draft's own features of step u-1 with the ground-truth token t_{j+1+u} at position j+u;
/// each entry sees the step-0 entries ≤ j (true features) and its own entries of steps 1..u; keys and values grow by
/// concatenation and the graph spans all steps, so memory grows with r (what <see cref="TrainBench"/> measures).
/// </summary>
public sealed class Eagle2Trainer(LlamaModel target, ITokenizer tokenizer, TrainingOptions options) : DraftTrainer(target, tokenizer, options)
{
    protected override int Depths => Options.EagleTttSteps;

    protected override StepStats Step(DraftModelBase draft, Tensor tokens, Tensor states, int stage, long globalStep, CancellationToken stopping)
        => Unrolled(draft, tokens, states, globalStep, Options.EagleTttSteps, stopping);

    internal override StepStats BenchStep(DraftModelBase draft, Tensor tokens, Tensor states, long globalStep, int simSteps, bool fullBackprop) =>
        Unrolled(draft, tokens, states, globalStep, simSteps);

    /// <summary>Training-time-test mask for unrolled step u: [n, (u+1)n]: causal over step 0, diagonal over steps 1..u.</summary>
    public static Tensor TttMask(int n, int u, Device? device = null)
    {
        var data = new bool[n * (u + 1) * n];
        int S = (u + 1) * n;
        for (int j = 0; j < n; j++)
        {
            for (int i = 0; i <= j; i++) data[j * S + i] = true;
            for (int r = 1; r <= u; r++) data[j * S + r * n + j] = true;
        }
        return tensor(data, [n, S], device: device);
    }

    internal StepStats Unrolled(DraftModelBase model, Tensor tokens, Tensor states, long globalStep, int steps, CancellationToken stopping = default)
    {
        var draft = model as Eagle2Draft ?? throw new ArgumentException($"expected an EAGLE-2 draft, got {model.GetType().Name}");
        int B = (int)tokens.shape[0], T = (int)tokens.shape[1], n = T - 1;
        if (n - (steps - 1) < 1) throw new ArgumentException($"sequence length {T} is too short for {steps} unrolled steps");
        using var gen = StepGenerator(globalStep, 3);
        var features = Losses.UniformNoise(states.narrow(1, 0, n), Options.NoiseStd, gen);       // f_j, j = 0..n-1
        Tensor? pastK = null, pastV = null;
        Tensor? total = null;
        double ceSum = 0, vlSum = 0;
        var agreeByDepth = new double[steps]; var countByDepth = new double[steps];
        for (int u = 0; u < steps; u++)
        {
            if (u > 0) ThrowIfStopping(stopping, globalStep, u);                                  // between unrolled steps
            // Entry j at step u: token t_{j+1+u} at position j+u, predicting f_{j+1+u}. Entries whose target lies beyond
            // the sequence (j+1+u > T-1) get a clamped token and are left out of the loss.
            var src = Enumerable.Range(0, n).Select(j => (long)Math.Min(j + 1 + u, T - 1)).ToArray();
            var srcT = tensor(src, device: Target.Device);
            var nextTokens = tokens.index_select(1, srcT);                                       // [B, n]
            // Positions j+u, clamped to the draft's rotary table: only entries outside the loss (j >= n-u) can exceed it.
            int maxPos = draft.Config.MaxPositions - 1;
            var positions = tensor(Enumerable.Range(0, n).Select(j => (long)Math.Min(j + u, maxPos)).ToArray(), device: Target.Device);   // [n]
            var mask = TttMask(n, u, Target.Device);                                           // [n, (u+1)n]
            var (fhat, k, v) = draft.ForwardStep(nextTokens, features, positions, pastK, pastV, mask);   // fhat [B, n, D]
            pastK = k; pastV = v;

            int valid = n - u;                                                                   // entries j < n-u have targets
            var h = fhat.narrow(1, 0, valid);
            var truth = states.narrow(1, 1 + u, valid);                                          // f_{j+1+u}
            var p = Losses.TargetProbs(Target, truth, KeptIds);
            var q = draft.Logits(h);
            long D = h.shape[2], V = q.shape[2];
            var ce = Losses.SoftCrossEntropy(q.reshape(-1, V), p.reshape(-1, V));
            var vl = Losses.SmoothL1PerRow(h.reshape(-1, D), truth.reshape(-1, D));
            var loss = Losses.Scaled(vl.mean(), Options.EffectiveVLossWeight).add(Losses.Scaled(ce.mean(), Options.EffectiveCeWeight), TorchScalars.One);
            total = total is null ? loss : total.add(loss, TorchScalars.One);
            ceSum += ce.mean().item<float>(); vlSum += vl.mean().item<float>();
            var agree = Losses.Top1Agreement(q.detach(), p);
            agreeByDepth[u] = agree.sum().item<float>(); countByDepth[u] = agree.numel();
            features = fhat;                                                                     // next step drafts from its own features
        }
        ThrowIfStopping(stopping, globalStep, steps);
        total!.backward();
        return new StepStats(total.item<float>(), ceSum / steps, vlSum / steps, agreeByDepth, countByDepth);
    }
}
