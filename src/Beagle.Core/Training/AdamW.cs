using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Beagle.Training;

/// <summary>
/// TorchSharp's AdamW with its update written out so that every scalar an operation reads stays alive until the
/// operation returns. Why: TorchSharp's own step passes numbers to native calls as temporary <see cref="Scalar"/>
/// objects (<c>mul_(beta1)</c>, <c>add_(eps)</c>, ...), which nothing references once their handle is read; a garbage
/// collection during the call (any thread's allocation can start one) may finalise such a Scalar and free it while
/// libtorch reads it (a test failed so: "Expected false to be true" from c10::Scalar::toFloat inside AdamW.step).
/// The arithmetic is TorchSharp's, operation for operation with the same values, so parameters and optimiser state are
/// bit-identical to its AdamW's (a test holds them to it), and the state saves and loads in its format (the base class
/// keeps it). The class is named AdamW on purpose: a saved optimiser state records the optimiser's type name and loads
/// only into a type of that name, so checkpoints written with TorchSharp's AdamW resume here and the other way round.
/// No AMSGrad and no maximise (what the trainer uses).
/// </summary>
internal sealed class AdamW : TorchSharp.Modules.AdamW
{
    public AdamW(IEnumerable<Parameter> parameters, double lr, double beta1, double beta2, double weightDecay = 0, double eps = 1e-8)
        : base(parameters, lr, beta1, beta2, eps, weightDecay, amsgrad: false, maximize: false) { }

    public override Tensor step(Func<Tensor>? closure = null) => _step<ParamGroup>(group =>
    {
        var o = (Options)group.Options;
        double beta1 = o.beta1!.Value, beta2 = o.beta2!.Value, weightDecay = o.weight_decay!.Value, eps = o.eps!.Value, lr = o.LearningRate!.Value;
        using var decay = (1 - lr * weightDecay).ToScalar();
        using var b1 = beta1.ToScalar();
        using var oneMinusB1 = (1 - beta1).ToScalar();
        using var b2 = beta2.ToScalar();
        using var oneMinusB2 = (1 - beta2).ToScalar();
        using var e = eps.ToScalar();
        foreach (var param in group.Parameters)
        {
            var state = (State)_state[param.Handle];
            using var scope = NewDisposeScope();
            var grad = param.grad;
            if (grad is null) continue;
            state.step += 1;
            param.mul_(decay);
            double biasCorrection1 = 1 - Math.Pow(beta1, state.step);
            double biasCorrection2 = 1 - Math.Pow(beta2, state.step);
            state.exp_avg.mul_(b1).add_(grad, alpha: oneMinusB1);
            state.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value: oneMinusB2);
            using var sqrtBc2 = Math.Sqrt(biasCorrection2).ToScalar();
            var denom = state.exp_avg_sq.sqrt().div_(sqrtBc2).add_(e);
            using var stepSize = (-(lr / biasCorrection1)).ToScalar();
            param.addcdiv_(state.exp_avg, denom, value: stepSize);
            GC.KeepAlive(grad);
        }
    }, closure);
}
