using Beagle.Cli.Commands;
using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tests.Infrastructure;
using TorchSharp;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Beagle.Tests.Drafting;

/// <summary>
/// A draft architecture defined and registered here, in the tests alone: one linear map, nothing of Beagle or EAGLE-2.
/// Node state s = e(token) + W·(parent state), the root's parent state being the target's last true state; the
/// log-probs come through the target's LM head. Its checkpoint is written and loaded by the same code as the built-in
/// drafts, and the CLI's loader decodes with it.
/// </summary>
sealed class LinearToyArchitecture : DraftArchitecture
{
    public const string ArchName = "linear-toy";
    public override string Name => ArchName;
    public override DraftModelBase Create(DraftConfig config, LlamaModel target) => new LinearToyDraft(config, target);
}

sealed class LinearToyDraft : DraftModelBase
{
    readonly Linear _w;

    public LinearToyDraft(DraftConfig config, LlamaModel target) : base("LinearToyDraft", config, target)
    {
        _w = nn.Linear(config.Dim, config.Dim, hasBias: false, device: Dev);
        register_module("w", _w);
    }

    public override IDraftSession StartSession(int capacity) => new Session(this, capacity);

    /// <summary>Tensor session: the last true state [1, D] and this round's node states [R, D].</summary>
    sealed class Session(LinearToyDraft m, int capacity) : IDraftSession
    {
        Tensor? _last;
        readonly List<Tensor> _round = [];
        public int Length { get; private set; }
        public bool ConcatDraftStates { get; set; } = true;
        public long StateBytes => 0;

        public void Commit(ReadOnlySpan<int> tokens, Tensor hidden)
        {
            if (_round.Count > 0) throw new InvalidOperationException("call EndRound before Commit");
            if (Length + tokens.Length > capacity) throw new InvalidOperationException("capacity exceeded");
            _last?.Dispose();
            _last = hidden.narrow(0, hidden.shape[0] - 1, 1).detach().to(float32).clone().DetachFromDisposeScope();   // [1, D], kept past the caller's scope
            Length += tokens.Length;
        }

        public Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
        {
            using var _ = no_grad();
            var states = new Tensor[tokens.Length];
            for (int i = 0; i < tokens.Length; i++)
            {
                var parent = parents[i] < 0 ? _last! : _round[parents[i]];
                var s = m.Embed(tokens.Slice(i, 1)).add(m._w.forward(parent)).DetachFromDisposeScope();   // [1, D], kept for the round
                _round.Add(s);
                states[i] = s;
            }
            using var all = cat(states, 0);                                             // [N, D]
            using var logits = m.Logits(all);
            return F.log_softmax(logits, 1);                                            // [N, Vd], the caller's
        }

        public void EndRound() { foreach (var t in _round) t.Dispose(); _round.Clear(); }
        public void Dispose() { EndRound(); _last?.Dispose(); }
    }
}

[Collection(DraftingCollection.Name)]
public class ThirdArchitectureTests
{
    [Fact]
    public void A_draft_architecture_registered_by_the_tests_saves_loads_through_the_cli_loader_and_decodes_losslessly()
    {
        DraftArchitectures.Register(new LinearToyArchitecture());
        Assert.Contains(LinearToyArchitecture.ArchName, DraftArchitectures.Names);
        Assert.DoesNotContain(LinearToyArchitecture.ArchName, DraftArchitectures.Trainable);

        using var dir = TestAssets.TempDir();
        string draftDir = dir.File("toy");
        manual_seed(11);
        using (var written = DraftCheckpoint.Create(DraftConfig.ForTarget(TestAssets.Stories.Config, LinearToyArchitecture.ArchName), TestAssets.Stories))
        {
            Assert.IsType<LinearToyDraft>(written);
            DraftCheckpoint.Save(written, draftDir);
            // What the CLI's loader reads back is the module that was written. The whole budget is named, so the CLI
            // decodes with it as given (no calibration).
            var settings = new GenerateSettings
            {
                Target = TestAssets.ModelPath, Tokenizer = TestAssets.TokenizerPath, Draft = draftDir,
                TreeTokens = 8, TreeDepth = 4, TreeTopK = 2, TreeMinProb = 0,
            };
            var (models, spec, path) = CliDrafts.Load(settings);
            using var __ = models;
            Assert.Equal(draftDir, path);
            var toy = Assert.IsType<LinearToyDraft>(models.Draft);
            Assert.Equal(LinearToyArchitecture.ArchName, toy.Architecture);
            foreach (var ((_, a), (_, b)) in written.named_parameters().Zip(toy.named_parameters()))
                Assert.Equal(a.data<float>().ToArray(), b.data<float>().ToArray());

            // Greedy speculative decoding with it equals plain greedy decoding, and speculation did run.
            var plain = new Beagle.Decoding.Generator(models.Target, models.Tokenizer);
            Assert.Equal(new TreeBudget(8, 4, 2), spec.DefaultTreeBudget);
            foreach (var prompt in new[] { "Once upon a time", "The little dog" })
            {
                var o = new GenerationOptions { MaxNewTokens = 48 };
                var expected = plain.Complete(prompt, o);
                var actual = spec.Complete(prompt, o with { Speculative = new SpeculativeOptions() });
                Assert.Equal(expected.TokenIds, actual.TokenIds);
                Assert.True(actual.Stats.DraftRounds > 0, "no draft round ran");
            }
        }
    }

    [Fact]
    public void Registering_another_type_under_a_taken_name_is_refused()
    {
        var e = Assert.Throws<InvalidOperationException>(() => DraftArchitectures.Register(new FakeBeagle()));
        Assert.Contains("'beagle' is already registered", e.Message);
        Assert.Throws<InvalidDataException>(() => DraftArchitectures.Get("no-such-architecture"));
    }

    sealed class FakeBeagle : DraftArchitecture
    {
        public override string Name => DraftConfig.Beagle;
        public override DraftModelBase Create(DraftConfig config, LlamaModel target) => throw new NotSupportedException();
    }
}
