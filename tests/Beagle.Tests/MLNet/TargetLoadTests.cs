using Beagle.MLNet;
using Beagle.Runtime;
using Beagle.Tests.Infrastructure;
using Microsoft.ML;
using Xunit;

namespace Beagle.Tests.MLNet;

/// <summary>
/// Fitting TrainDraft loads the target once: the draft is trained on the returned transformer's engine thread with the
/// target it then decodes with (counted through the composition root's load hook, which sees only this test's loads).
/// </summary>
public class TargetLoadTests
{
    [Fact]
    public void TrainDraft_fit_loads_the_target_once()
    {
        var ml = new MLContext(seed: 1);
        var texts = File.ReadLines(TestAssets.TinyStories).Where(l => l.Trim().Length > 0).Take(40).Select(t => new PromptInput { Prompt = t }).ToArray();
        var data = ml.Data.LoadFromEnumerable(texts);
        using var dir = TestAssets.TempDir();
        var est = ml.Beagle().TrainDraft(new BeagleTrainDraftOptions
        {
            TargetPath = TestAssets.ModelPath, TokenizerPath = TestAssets.TokenizerPath, TextColumnName = "Prompt", MaxNewTokens = 4,
            Epochs = 2, Stage1Epochs = 1, MaxSequences = 8, BatchSize = 4, Window = 3, SimSteps = 2, SeqLen = 64, WarmupSteps = 1,
            EvalPrompts = 0, Plots = false, OutputDir = dir.File("run"),
        });
        var loads = new List<string>();
        ModelLoader.OnTargetLoad.Value = path => { lock (loads) loads.Add(path); };
        try
        {
            using var model = est.Fit(data);
            Assert.True(model.HasDraft);
        }
        finally { ModelLoader.OnTargetLoad.Value = null; }
        lock (loads) Assert.Equal([TestAssets.ModelPath], loads);
    }
}
