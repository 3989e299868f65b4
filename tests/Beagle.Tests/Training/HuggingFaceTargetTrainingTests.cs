using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Models;
using Beagle.Runtime;
using Beagle.Tests.Infrastructure;
using Beagle.Training;
using Xunit;

namespace Beagle.Tests.Training;

/// <summary>
/// Training works on every target the runtime loads: stories260K written as a Hugging Face folder by the project's
/// exporter, a draft trained for it with `beagle train --target FOLDER` (a few steps), and that draft loaded through the
/// composition root against the folder and decoding losslessly (greedy speculative output equals plain output).
/// </summary>
public class HuggingFaceTargetTrainingTests
{
    [Fact]
    public void Beagle_train_on_a_huggingface_folder_makes_a_draft_that_decodes_that_target_losslessly()
    {
        using var tmp = TestAssets.TempDir();
        string hf = tmp.File("stories260K-hf");
        using (var w = Llama2cCheckpoint.Load(TestAssets.ModelPath)) HuggingFaceExport.Write(w, hf);
        string data = tmp.File("data.txt"), outDir = tmp.File("run");
        File.WriteAllText(data, string.Join("\n\n", TextSources.SplitPlainText(File.ReadAllText(TestAssets.TinyStories)).Take(20)));

        // 20 stories at 64 tokens, batch 16: 2 steps per epoch, one epoch per stage; no evaluation.
        var r = ChildProcess.Beagle("train", "--target", hf, "--tokenizer", TestAssets.TokenizerPath, "--device", "cpu", "--data", data, "--out", outDir,
            "--seq-len", "64", "--epochs", "2", "--window", "3", "--sim-steps", "2", "--warmup", "2", "--eval-prompts", "0");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("done", r.Stdout);
        string draftDir = Path.Combine(outDir, "draft");
        Assert.True(File.Exists(Path.Combine(draftDir, "draft.json")), r.ToString());

        using var models = ModelLoader.Load(new ModelSpec { Target = hf, Tokenizer = TestAssets.TokenizerPath, Draft = draftDir, Device = "cpu" });
        Assert.NotNull(models.Draft);
        Assert.Equal(RopeLayout.HalfSplit, models.Target.Config.RopeLayout);   // the Hugging Face layout, not the llama2.c file's
        var plain = new Generator(models.Target, models.Tokenizer);
        var spec = new Generator(models.Target, models.Tokenizer, models.Draft);
        long rounds = 0;
        foreach (var prompt in new[] { "Once upon a time", "Tom and Lily went to the" })
        {
            var o = new GenerationOptions { MaxNewTokens = 40 };
            var expected = plain.Complete(prompt, o);
            var actual = spec.Complete(prompt, o with { Speculative = new SpeculativeOptions() });
            Assert.Equal(expected.TokenIds, actual.TokenIds);
            rounds += actual.Stats.DraftRounds;
        }
        Assert.True(rounds > 0, "speculation ran");
    }
}
