using Beagle.Drafting;
using Beagle.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Beagle.Tests.Infrastructure;

/// <summary>
/// A test draft independent of the project's neural drafts: log-probabilities of the next token given only the
/// node's own token, from a fixed [V, V] table (bigram counts of real text, or random numbers). Enough to exercise
/// trees, verification and acceptance with drafts that are often right (bigram) or almost always wrong (random).
/// </summary>
public sealed class MarkovDraft : IDraftModel
{
    readonly Tensor _logp;   // [V, V]
    public string Architecture => "markov-test";
    public int DraftVocabSize { get; }
    public IReadOnlyList<int>? DraftToTarget => null;

    MarkovDraft(Tensor logp) { _logp = logp; DraftVocabSize = (int)logp.shape[1]; }

    public static MarkovDraft Bigram(ITokenizer tokenizer, string textPath, int vocab, int maxChars = 200_000)
    {
        var text = File.ReadAllText(textPath);
        var ids = tokenizer.Encode(text[..Math.Min(maxChars, text.Length)], addBos: true);   // O(n log n) merges: fine for 200k chars
        var counts = new float[vocab * vocab];
        Array.Fill(counts, 0.01f);
        for (int i = 0; i + 1 < ids.Length; i++) counts[ids[i] * vocab + ids[i + 1]] += 1;
        using var c = tensor(counts, [vocab, vocab]);
        return new MarkovDraft(c.log_softmax(-1).DetachFromDisposeScope());
    }

    public static MarkovDraft Random(int vocab, int seed)
    {
        var g = new TorchSharp.torch.Generator((ulong)seed);
        using var three = 3.0.ToScalar();
        using var r = randn([vocab, vocab], generator: g).mul_(three);
        return new MarkovDraft(r.log_softmax(-1).DetachFromDisposeScope());
    }

    public IDraftSession StartSession(int capacity) => new Session(this);
    public long WeightBytes => _logp.NumberOfElements * _logp.ElementSize;

    /// <summary>log P(next | prev) under this draft.</summary>
    public float LogProb(int prev, int next) => _logp[prev, next].item<float>();
    public void Dispose() => _logp.Dispose();

    sealed class Session(MarkovDraft d) : IDraftSession
    {
        public int Length { get; private set; }
        public bool ConcatDraftStates { get; set; } = true;
        public long StateBytes => 0;   // no per-sequence state: a node's log-probs depend on its token only
        public void Commit(ReadOnlySpan<int> tokens, Tensor hidden)
        {
            if (hidden.shape[0] != tokens.Length) throw new ArgumentException("hidden rows must match tokens");
            Length += tokens.Length;
        }
        public Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
        {
            var idx = tokens.ToArray().Select(t => (long)t).ToArray();
            return d._logp.index_select(0, tensor(idx));
        }
        public void EndRound() { }
        public void Dispose() { }
    }
}
