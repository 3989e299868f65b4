using Beagle.Training;
using TorchSharp;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Training;

/// <summary>
/// The trainer's AdamW (Beagle.Training.AdamW: its update written out so that no scalar can be freed mid-call) against TorchSharp's AdamW on
/// the same parameters and gradients: bit-identical parameters after every step, and the same saved optimiser state,
/// byte for byte (checkpoints written by either load into the other).
/// </summary>
public sealed class AdamWTests
{
    [Theory]
    [InlineData(0.0)]
    [InlineData(0.01)]
    public void Steps_and_saved_state_are_those_of_torchsharps_adamw(double weightDecay)
    {
        using var g = new Generator(3);
        Parameter[] Params() => [new Parameter(randn([5, 7], generator: g)), new Parameter(randn([11], generator: g))];
        var mine = Params(); var theirs = Params();
        for (int i = 0; i < mine.Length; i++) using (no_grad()) theirs[i].copy_(mine[i]);
        using var initial = mine[0].detach().clone();
        using var a = new Beagle.Training.AdamW(mine, lr: 3e-3, beta1: 0.9, beta2: 0.95, weightDecay: weightDecay);
        using var b = optim.AdamW(theirs, lr: 3e-3, beta1: 0.9, beta2: 0.95, weight_decay: weightDecay);
        for (int step = 0; step < 6; step++)
        {
            for (int i = 0; i < mine.Length; i++)
            {
                using var grad = randn(mine[i].shape, generator: g);
                mine[i].grad = grad.clone(); theirs[i].grad = grad.clone();
            }
            if (step == 3) foreach (var pg in a.ParamGroups.Concat(b.ParamGroups)) pg.LearningRate = 1e-3;   // as the trainer's schedule does
            a.step(); b.step();
            for (int i = 0; i < mine.Length; i++) Assert.True(mine[i].eq(theirs[i]).all().item<bool>(), $"step {step}, parameter {i} differs");
        }
        Assert.False(mine[0].eq(initial).all().item<bool>());   // the parameters did move
        Assert.Equal(Saved(b), Saved(a));
        // Each loads the other's state (the format names the optimiser's type).
        using var c = new Beagle.Training.AdamW(Params(), lr: 3e-3, beta1: 0.9, beta2: 0.95, weightDecay: weightDecay);
        using (var r = new BinaryReader(new MemoryStream(Saved(b)))) c.load_state_dict(r);
        Assert.Equal(Saved(b), Saved(c));
    }

    static byte[] Saved(OptimizerHelper optimizer)
    {
        using var stream = new MemoryStream();
        using (var writer = new BinaryWriter(stream, System.Text.Encoding.UTF8, leaveOpen: true)) optimizer.save_state_dict(writer);
        return stream.ToArray();
    }
}
