using Beagle.Models;
using Beagle.Tokenization;
using Beagle.Training;

namespace Beagle.Drafting;

/// <summary>
/// One draft architecture: the name its checkpoints record (<c>draft.json</c>'s <c>config.architecture</c>, the CLI's
/// <c>--arch</c>) and how to build and train it. Its drafts run through the module's own sessions
/// (<see cref="IDraftModel.StartSession"/>); loading a checkpoint is <see cref="Create"/> followed by reading the
/// module's parameters from <c>draft.safetensors</c> (<see cref="DraftCheckpoint.Load(string, LlamaModel)"/>), so the
/// module's parameter names are the checkpoint format. Registered once in <see cref="DraftArchitectures"/>.
/// </summary>
public abstract class DraftArchitecture
{
    /// <summary>The name a checkpoint records and <c>--arch</c> takes (lower case, unique among the registered ones).</summary>
    public abstract string Name { get; }

    /// <summary>A freshly initialised draft of this architecture for <paramref name="target"/> (config already validated).</summary>
    public abstract DraftModelBase Create(DraftConfig config, LlamaModel target);

    /// <summary>Whether <see cref="CreateTrainer"/> gives a trainer (<c>beagle train --arch</c> takes only these).</summary>
    public virtual bool IsTrainable => false;

    /// <summary>The trainer of this architecture's drafts (options validated by the caller).</summary>
    public virtual DraftTrainer CreateTrainer(LlamaModel target, ITokenizer tokenizer, TrainingOptions options) =>
        throw new NotSupportedException($"draft architecture '{Name}' has no trainer");

    /// <summary>The loss weights and stage split a training run uses when its options leave them unset.</summary>
    public virtual DraftTrainingDefaults TrainingDefaults => DraftTrainingDefaults.Standard;

    public override string ToString() => Name;
}

/// <summary>Training settings an architecture chooses when <see cref="TrainingOptions"/> leaves them unset.</summary>
/// <param name="CeWeight">Weight of the soft cross-entropy term.</param>
/// <param name="VLossWeight">Weight of the feature regression (SmoothL1) term.</param>
/// <param name="TwoStage">Whether training has a first stage (half the epochs unless <see cref="TrainingOptions.Stage1Epochs"/> says otherwise); false: one stage, reported as 1.</param>
public sealed record DraftTrainingDefaults(double CeWeight, double VLossWeight, bool TwoStage)
{
    /// <summary>EAGLE's weights (0.1 CE, 1.0 regression), one stage.</summary>
    public static DraftTrainingDefaults Standard { get; } = new(0.1, 1.0, false);
}
