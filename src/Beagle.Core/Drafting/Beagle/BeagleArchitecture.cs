using Beagle.Models;
using Beagle.Tokenization;
using Beagle.Training;

namespace Beagle.Drafting;

/// <summary>
/// The Beagle draft (docs/method.md, "The draft"): <see cref="BeagleDraft"/>, its tensor and managed sessions, trained
/// by <see cref="TwoStageTrainer"/> (stage 1 then stage 2, CE weight 1 and regression weight 10).
/// </summary>
public sealed class BeagleArchitecture : DraftArchitecture
{
    public override string Name => DraftConfig.Beagle;
    public override DraftModelBase Create(DraftConfig config, LlamaModel target) => new BeagleDraft(config, target);
    public override bool IsTrainable => true;
    public override DraftTrainer CreateTrainer(LlamaModel target, ITokenizer tokenizer, TrainingOptions options) => new TwoStageTrainer(target, tokenizer, options);
    public override DraftTrainingDefaults TrainingDefaults { get; } = new(CeWeight: 1.0, VLossWeight: 10.0, TwoStage: true);
}
