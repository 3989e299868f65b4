using System.Text.Json.Nodes;
using Beagle.Drafting;
using Beagle.Tests.Infrastructure;
using Beagle.Training;
using TorchSharp.PyBridge;
using Xunit;
using static TorchSharp.torch;

namespace Beagle.Tests.Training;

public class TrainerTests
{
    static string DataFile(TempDir tmp, int docs = 60)
    {
        var path = tmp.File("data.txt");
        File.WriteAllText(path, string.Join("\n\n", TextSources.SplitPlainText(File.ReadAllText(TestAssets.TinyStories)).Take(docs)));
        return path;
    }

    static (Tensor Tokens, Tensor States) FixedBatch(int B = 4, int T = 64)
    {
        var docs = TextSources.SplitPlainText(File.ReadAllText(TestAssets.TinyStories)).Take(30);
        var seqs = SequencePacker.Pack(SequencePacker.Tokenize(docs, TestAssets.StoriesTokenizer), T, B);
        var tokens = tensor(seqs.SelectMany(s => s.Select(x => (long)x)).ToArray(), [B, T]);
        return (tokens, TestAssets.Stories.HiddenStates(tokens));
    }

    [Theory]
    [InlineData("beagle", 1)]
    [InlineData("beagle", 2)]
    [InlineData("eagle2", 1)]
    public void AFewStepsReduceTheLossOnAFixedBatch(string arch, int stage)
    {
        using var tmp = TestAssets.TempDir();
        var options = new TrainingOptions { Architecture = arch, OutputDir = tmp.Path, Generate = 1, WindowK = 3, SimSteps = 3, NoiseStd = 0 };
        var trainer = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, options);
        manual_seed(7);
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(TestAssets.Stories.Config, arch), TestAssets.Stories);
        var ps = draft.parameters().Where(p => p.requires_grad).ToList();
        using var opt = new AdamW(ps, lr: 3e-3, beta1: 0.9, beta2: 0.95);
        var (tokens, states) = FixedBatch();
        var losses = new List<double>();
        for (int i = 0; i < 15; i++)
        {
            using var scope = NewDisposeScope();
            opt.zero_grad();
            // Same global step each time: same window offset and noise, so only the parameters change.
            var st = trainer.RunStep(draft, tokens, states, stage, 0);
            Assert.True(double.IsFinite(st.Loss), $"loss is {st.Loss}");
            opt.step();
            losses.Add(st.Loss);
        }
        Assert.True(losses[^1] < 0.8 * losses[0], $"{arch} stage {stage}: loss {losses[0]:F4} -> {losses[^1]:F4}");
    }

    /// <summary>
    /// Gradients of every trainable parameter of one draft after a stage-1 and after a stage-2 step (one simulated step)
    /// with windows of <paramref name="windowK"/>, from the same weights (no optimiser step between them).
    /// </summary>
    static (Dictionary<string, Tensor> Stage1, Dictionary<string, Tensor> Stage2) StageGradients(int windowK, Tensor tokens, Tensor states)
    {
        using var tmp = TestAssets.TempDir();
        var options = new TrainingOptions { OutputDir = tmp.Path, Generate = 1, WindowK = windowK, SimSteps = 1, NoiseStd = 0 };
        var trainer = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, options);
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(TestAssets.Stories.Config), TestAssets.Stories);
        var ps = draft.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        Dictionary<string, Tensor> Step(int stage)
        {
            foreach (var (_, p) in ps) p.grad?.zero_();
            trainer.RunStep(draft, tokens, states, stage, 5);
            return ps.ToDictionary(p => p.name, p => p.parameter.grad!.detach().clone());
        }
        return (Step(1), Step(2));
    }

    [Fact]
    public void DetachedSimulationGivesStepOneGradientsEqualToStageOne()
    {
        // With windows of one position every valid query has offset 1, so stage 1 (inverse block mask over the true
        // states) and stage 2 with one simulated step (keys = [true states ; draft-state slots], slots not yet visible)
        // train the same queries with the same weights (beta_1 = k = 1): their gradients must be equal. Two code paths
        // (masks, key layouts, loss normalisations) checked against each other; a visible slot, a wrong beta or a
        // different normalisation would change them.
        var (tokens, states) = FixedBatch(2, 32);
        var (stage1, stage2) = StageGradients(1, tokens, states);
        Assert.Equal(stage1.Keys.Order(), stage2.Keys.Order());
        foreach (var (name, g1) in stage1)
        {
            Assert.True(g1.abs().max().item<float>() > 0, $"{name}: zero gradient, the comparison would prove nothing");
            Assert.True(g1.allclose(stage2[name], rtol: 1e-4, atol: 1e-6), $"{name}: stage-2 one-step gradient differs from stage 1 by {(g1 - stage2[name]).abs().max().item<float>():E2}");
        }

        // The comparison can fail: with windows of two, stage 1 also trains the offset-2 queries, which one simulated step does not.
        var (wide1, wide2) = StageGradients(2, tokens, states);
        Assert.Contains(wide1.Keys, name => !wide1[name].allclose(wide2[name], rtol: 1e-4, atol: 1e-6));
    }

    [Fact]
    public void ResumingAnInterruptedRunGivesTheSameWeightsAsAnUninterruptedRun()
    {
        using var tmp = TestAssets.TempDir();
        var data = DataFile(tmp);
        TrainingOptions Opts(string dir) => new()
        {
            OutputDir = tmp.File(dir), FeatureCacheDir = tmp.File("features"), DataPaths = [data], SeqLen = 64, BatchSize = 4,
            MaxSequences = 12, Epochs = 2, Stage1Epochs = 1, WindowK = 3, SimSteps = 2, WarmupSteps = 2, EvalPrompts = 0, Plots = false,
            CheckpointEverySteps = 100, LogEverySteps = 1, Seed = 11,
        };
        var target = TestAssets.Stories; var tok = TestAssets.StoriesTokenizer;
        var full = DraftTrainer.Create(target, tok, Opts("a")).Train();
        Assert.True(full.Completed);
        Assert.Equal(6, full.Steps);                                          // 12 sequences / 4 = 3 batches × 2 epochs

        var first = DraftTrainer.Create(target, tok, Opts("b") with { StopAfterSteps = 4 }).Train();   // stops inside stage 2
        Assert.False(first.Completed);
        Assert.Equal(4, first.Steps);
        Assert.True(first.FeatureCacheReused);
        var resumed = DraftTrainer.Create(target, tok, Opts("b") with { Resume = true }).Train();
        Assert.True(resumed.Completed);
        Assert.Equal(6, resumed.Steps);

        using var a = DraftCheckpoint.Load(full.DraftDir!, target);
        using var b = DraftCheckpoint.Load(resumed.DraftDir!, target);
        var pa = a.state_dict(); var pb = b.state_dict();
        Assert.Equal(pa.Keys.Order(), pb.Keys.Order());
        foreach (var k in pa.Keys)
            Assert.True(pa[k].allclose(pb[k], rtol: 0, atol: 1e-6), $"parameter {k} differs after resume");

        var training = DraftCheckpoint.ReadTraining(full.DraftDir!);
        Assert.Equal("beagle", (string?)training["options"]!["architecture"]);
        var lines = File.ReadAllLines(Path.Combine(full.OutputDir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.Equal(6, lines.Count(l => (string?)l["type"] == "step"));
        Assert.Equal(2, lines.Count(l => (string?)l["type"] == "epoch"));
    }

    /// <summary>12 sequences / batch 4 = 3 steps per epoch × 2 epochs; stage 2 (2 simulated steps) from step index 3 on.</summary>
    static TrainingOptions SmallRun(TempDir tmp, string dir, string data, string arch = "beagle") => new()
    {
        Architecture = arch, OutputDir = tmp.File(dir), FeatureCacheDir = tmp.File("features"), DataPaths = [data], SeqLen = 64, BatchSize = 4,
        MaxSequences = 12, Epochs = 2, Stage1Epochs = 1, WindowK = 3, SimSteps = 2, EagleTttSteps = 2, WarmupSteps = 2, EvalPrompts = 0,
        Plots = false, CheckpointEverySteps = 100, LogEverySteps = 1, Seed = 11,
    };

    [Theory]
    [InlineData("beagle", 1, 0)]   // stage 1: between the forward and the backward of the 2nd step
    [InlineData("beagle", 4, 1)]   // stage 2: between the two simulated steps of the 5th step
    [InlineData("eagle2", 4, 1)]   // between EAGLE-2's two unrolled steps of the 5th step
    public void A_stop_inside_a_step_drops_that_step_and_checkpoints_the_one_before(string arch, long step, int part)
    {
        using var tmp = TestAssets.TempDir();
        var data = DataFile(tmp);
        using var cts = new CancellationTokenSource();
        var trainer = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, SmallRun(tmp, "stopped", data, arch));
        trainer.OnStopCheck = (s, p) => { if (s == step && p == part) cts.Cancel(); };
        var reports = new List<TrainingProgress>();
        var r = trainer.Train(new SyncProgress(reports.Add), cts.Token);

        Assert.False(r.Completed);
        Assert.Equal(step, r.Steps);
        Assert.Equal(step, r.CheckpointStep);
        Assert.DoesNotContain(reports, p => p.Message is null && p.Step > step);
        Assert.Equal(step, reports[^1].CheckpointStep);
        // Nothing of the dropped step reached the weights or the optimiser: the checkpoint is byte for byte the one of a
        // run that stopped at that boundary.
        var boundary = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, SmallRun(tmp, "boundary", data, arch) with { StopAfterSteps = step }).Train();
        Assert.Equal(step, boundary.Steps);
        foreach (var file in new[] { DraftCheckpoint.WeightsFile, "optimizer.bin" })
            Assert.True(File.ReadAllBytes(Path.Combine(r.OutputDir, "checkpoint", file)).AsSpan()
                .SequenceEqual(File.ReadAllBytes(Path.Combine(boundary.OutputDir, "checkpoint", file))), $"{file} differs");
    }

    [Fact]
    public void Resume_without_a_checkpoint_refuses_and_says_where_it_looked()
    {
        using var tmp = TestAssets.TempDir();
        var options = SmallRun(tmp, "fresh", DataFile(tmp)) with { Resume = true };
        var e = Assert.Throws<InvalidOperationException>(() => DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, options).Train());
        Assert.Contains(Path.Combine(options.OutputDir, "checkpoint"), e.Message);
        Assert.Contains(".checkpoint.old-*", e.Message);
        Assert.False(Directory.Exists(options.OutputDir));   // refused before any work
    }

    [Fact]
    public void Resume_recovers_the_checkpoint_that_an_interrupted_save_left_aside()
    {
        using var tmp = TestAssets.TempDir();
        var options = SmallRun(tmp, "run", DataFile(tmp));
        var first = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, options with { StopAfterSteps = 2 }).Train();
        Assert.Equal(2, first.CheckpointStep);
        // What a crash between AtomicFile.ReplaceDirectory's two renames leaves: the previous checkpoint set aside, the
        // new one still under its temporary name (maybe half written), no checkpoint/.
        Directory.Move(Path.Combine(options.OutputDir, "checkpoint"), Path.Combine(options.OutputDir, ".checkpoint.old-0123abcd"));
        Directory.CreateDirectory(Path.Combine(options.OutputDir, ".checkpoint.tmp-4567cdef"));
        File.WriteAllText(Path.Combine(options.OutputDir, ".checkpoint.tmp-4567cdef", DraftCheckpoint.WeightsFile), "half");

        var found = DraftTrainer.FindCheckpoint(options.OutputDir);
        Assert.NotNull(found);
        Assert.Equal(2, found.Step);
        Assert.EndsWith(".checkpoint.old-0123abcd", found.RecoveredFrom);
        Assert.Equal(["checkpoint"], Directory.GetDirectories(options.OutputDir).Select(Path.GetFileName).Where(n => n!.Contains("checkpoint")));

        var notes = new List<string>();
        var resumed = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, options with { Resume = true })
            .Train(new SyncProgress(p => { if (p.Message is { } m) notes.Add(m); }));
        Assert.True(resumed.Completed);
        Assert.Equal(6, resumed.Steps);
        Assert.Contains(notes, n => n.StartsWith("resuming from step 2 of 6", StringComparison.Ordinal));
    }

    [Fact]
    public void DecayEpochsAnnealTheLearningRateLinearlyToZeroOverTheLastEpochs()
    {
        using var tmp = TestAssets.TempDir();
        var options = new TrainingOptions
        {
            OutputDir = tmp.File("run"), DataPaths = [DataFile(tmp)], SeqLen = 64, BatchSize = 4, MaxSequences = 12, Epochs = 2,
            Stage1Epochs = 1, WindowK = 3, SimSteps = 2, WarmupSteps = 2, DecayEpochs = 1, LearningRate = 0.01, EvalPrompts = 0,
            Plots = false, LogEverySteps = 1, Seed = 3,
        };
        var r = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, options).Train();
        Assert.Equal(6, r.Steps);   // 3 batches × 2 epochs
        var lrs = File.ReadAllLines(Path.Combine(r.OutputDir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(l => (string?)l["type"] == "step").Select(l => (double)l["lr"]!).ToArray();
        // warm-up over 2 steps, constant, then the last epoch (3 steps) falls linearly: 3/3, 2/3, 1/3 of the peak
        double[] expected = [0.005, 0.01, 0.01, 0.01, 0.01 * 2 / 3, 0.01 / 3];
        Assert.Equal(expected.Length, lrs.Length);
        for (int i = 0; i < lrs.Length; i++) Assert.Equal(expected[i], lrs[i], 9);

        var bad = Assert.ThrowsAny<ArgumentException>(() => (options with { DecayEpochs = 3 }).Validate());
        Assert.Contains("decay-epochs", bad.Message);
    }

    [Fact]
    public void CancellationSavesACheckpointAndReturnsCleanly()
    {
        using var tmp = TestAssets.TempDir();
        using var cts = new CancellationTokenSource();
        var options = new TrainingOptions
        {
            Architecture = "eagle2", OutputDir = tmp.Path, DataPaths = [DataFile(tmp, 30)], SeqLen = 64, BatchSize = 2, MaxSequences = 8,
            Epochs = 1, EvalPrompts = 0, Plots = false, DraftVocab = 200, LogEverySteps = 1,
        };
        var progress = new SyncProgress(p => { if (p.Step == 2) cts.Cancel(); });
        var r = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, options).Train(progress, cts.Token);
        Assert.False(r.Completed);
        Assert.Equal(2, r.Steps);
        Assert.True(File.Exists(Path.Combine(tmp.Path, "checkpoint", "state.json")));
        Assert.True(File.Exists(Path.Combine(tmp.Path, "checkpoint", "optimizer.bin")));
    }

    [Fact]
    public void PlotsRenderHeadless()
    {
        using var tmp = TestAssets.TempDir();
        var files = TrainingPlots.Write(tmp.Path, [
            new EpochMetrics(1, 1, 10, 3.0, [0.5, 0.3, 0.2], 1.8, [0.6, 0.3], null),
            new EpochMetrics(2, 2, 20, 2.5, [0.6, 0.35, double.NaN], null, null, "NotSupportedException"),
        ]);
        foreach (var f in files) Assert.True(new FileInfo(f).Length > 1000, f);
    }

    [Fact]
    public void TrainBenchReportsMemoryAndSpeed()
    {
        var r = TrainBench.RunOne(TestAssets.Stories, TestAssets.StoriesTokenizer, new TrainBenchSettings("beagle", 2, Batch: 2, SeqLen: 32, Steps: 2));
        // What was run and how the figures relate; how fast it ran is the benchmark's business.
        Assert.Equal(("beagle", 2, 2, 32, 2), (r.Arch, r.SimSteps, r.Batch, r.SeqLen, r.Steps));
        Assert.Equal(r.Batch * r.SeqLen / (r.StepMs / 1000), r.TokensPerSecond, 6);   // tokens of a step over its time
        Assert.True(r.PeakReset);                                                     // Linux: the peak restarts at the baseline...
        Assert.True(r.PeakMemoryMb >= r.BaselineMemoryMb);                           // ...so it cannot be below it
        Assert.Equal(r.PeakMemoryMb - r.BaselineMemoryMb, r.StepMemoryMb, 9);
        var e = TrainBench.RunOne(TestAssets.Stories, TestAssets.StoriesTokenizer, new TrainBenchSettings("eagle2", 2, Batch: 2, SeqLen: 32, Steps: 2));
        Assert.Equal("eagle2", TrainBenchResult.FromJson(e.ToJson()).Arch);
    }

    /// <summary>Progress&lt;T&gt; posts to the thread pool; tests need the callback inline.</summary>
    [Fact]
    public void A_stop_during_an_epochs_evaluation_ends_that_epoch_on_resume_so_the_record_is_the_uninterrupted_runs()
    {
        using var tmp = TestAssets.TempDir();
        var data = DataFile(tmp);
        TrainingOptions Opts(string dir) => SmallRun(tmp, dir, data) with { EvalPrompts = 2, EvalMaxNewTokens = 8 };
        var full = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, Opts("full")).Train();
        Assert.True(full.Completed);

        // Stop as the first epoch's last step is reported: the epoch's evaluation then starts with the stop requested.
        using var cts = new CancellationTokenSource();
        var stopped = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, Opts("run"))
            .Train(new SyncProgress(p => { if (p.Message is null && p.Step == 3) cts.Cancel(); }), cts.Token);
        Assert.False(stopped.Completed);
        Assert.Equal(3, stopped.Steps);
        Assert.Empty(stopped.Epochs);   // the epoch is not recorded with a cancelled evaluation

        var resumed = DraftTrainer.Create(TestAssets.Stories, TestAssets.StoriesTokenizer, Opts("run") with { Resume = true }).Train();
        Assert.True(resumed.Completed);
        Assert.Equal(full.Epochs.Count, resumed.Epochs.Count);
        for (int e = 0; e < full.Epochs.Count; e++)
        {
            Assert.Null(resumed.Epochs[e].EvalError);
            Assert.Equal(full.Epochs[e].Loss, resumed.Epochs[e].Loss);
            Assert.Equal(full.Epochs[e].EvalAcceptanceLength, resumed.Epochs[e].EvalAcceptanceLength);
        }
        Assert.Equal(File.ReadAllBytes(Path.Combine(full.DraftDir!, DraftCheckpoint.WeightsFile)), File.ReadAllBytes(Path.Combine(resumed.DraftDir!, DraftCheckpoint.WeightsFile)));
    }

    sealed class SyncProgress(Action<TrainingProgress> f) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => f(value);
    }
}
