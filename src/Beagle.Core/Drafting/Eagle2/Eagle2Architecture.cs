using Beagle.Models;
using Beagle.Tokenization;
using Beagle.Training;

namespace Beagle.Drafting;

/// <summary>
/// The EAGLE-2 baseline (docs/method.md, "EAGLE-2 baseline"): <see cref="Eagle2Draft"/>, its tensor and managed
/// sessions, trained by <see cref="Eagle2Trainer"/> (one stage, EAGLE's weights: CE 0.1, regression 1.0).
/// </summary>
public sealed class Eagle2Architecture : DraftArchitecture
{
    public override string Name => DraftConfig.Eagle2;
    public override DraftModelBase Create(DraftConfig config, LlamaModel target) => new Eagle2Draft(config, target);
    public override bool IsTrainable => true;
    public override DraftTrainer CreateTrainer(LlamaModel target, ITokenizer tokenizer, TrainingOptions options) => new Eagle2Trainer(target, tokenizer, options);
    public override DraftTrainingDefaults TrainingDefaults => DraftTrainingDefaults.Standard;
}
