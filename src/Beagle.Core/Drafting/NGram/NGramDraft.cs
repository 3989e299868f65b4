using Beagle.Models;
using static TorchSharp.torch;

namespace Beagle.Drafting.NGram;

/// <summary>Settings of <see cref="NGramDraft"/> (prompt lookup). How many tokens a round drafts is the tree budget's depth.</summary>
public sealed record NGramOptions
{
    /// <summary>Longest suffix of the text looked up (tried first: a longer match predicts better). 1-16; default 3.</summary>
    public int MaxNgram { get; init; } = 3;

    /// <summary>Shortest suffix looked up before giving up (no proposal, the round drafts nothing more). 1-MaxNgram; default 1.</summary>
    public int MinNgram { get; init; } = 1;

    public NGramOptions Validate()
    {
        if (MaxNgram is < 1 or > 16) throw new ArgumentOutOfRangeException(nameof(MaxNgram), $"the longest n-gram must be in [1, 16], got {MaxNgram}");
        if (MinNgram < 1 || MinNgram > MaxNgram) throw new ArgumentOutOfRangeException(nameof(MinNgram), $"the shortest n-gram must be in [1, {MaxNgram}] (the longest), got {MinNgram}");
        return this;
    }
}

/// <summary>
/// Prompt lookup (n-gram drafting): no model at all. A node's proposal is the token that followed the most recent
/// earlier occurrence of the text's last n tokens (n from <see cref="NGramOptions.MaxNgram"/> down to
/// <see cref="NGramOptions.MinNgram"/>) in the prompt plus everything generated, the node's own draft ancestors
/// included, so a chain keeps copying as long as the copied text goes on. Pays where the output repeats its input
/// (retelling, summarising, editing code, quoting); costs almost nothing where it does not.
/// The draft distribution is a point mass: log-probability 0 on the proposal and -inf on every other token, or -inf
/// everywhere when nothing matches (the tree then stops growing there). Verification needs nothing special: the tree's
/// tokens are chosen deterministically, which the acceptance rule already assumes (docs/method.md, "Verification").
/// </summary>
public sealed class NGramDraft : IDraftModel, IDraftIdentity
{
    readonly int _vocab;

    public NGramDraft(int vocabSize, NGramOptions? options = null)
    {
        if (vocabSize < 1) throw new ArgumentOutOfRangeException(nameof(vocabSize), $"vocabulary size must be positive, got {vocabSize}");
        _vocab = vocabSize;
        Options = (options ?? new NGramOptions()).Validate();
    }

    /// <summary>An n-gram draft over <paramref name="target"/>'s vocabulary.</summary>
    public NGramDraft(LlamaModel target, NGramOptions? options = null) : this(target.Config.VocabSize, options) { }

    public NGramOptions Options { get; }
    public string Architecture => "ngram";
    public int DraftVocabSize => _vocab;
    public IReadOnlyList<int>? DraftToTarget => null;
    public long WeightBytes => 0;
    public string Identity => $"ngram|n={Options.MinNgram}-{Options.MaxNgram}|v={_vocab}";

    public IDraftSession StartSession(int capacity) => new NGramSession(_vocab, capacity, Options);

    public void Dispose() { }
}

/// <summary>
/// One sequence's n-gram state: the committed tokens, and this round's nodes (token, parent). Plain arrays; an Expand
/// allocates nothing.
/// </summary>
internal sealed class NGramSession : IDraftSession, IArrayDraftSession
{
    readonly int _vocab, _capacity, _maxN, _minN;
    // [capacity + MaxRoundNodes]: committed tokens, then (during a lookup) the node's draft path after them.
    readonly int[] _text;
    readonly int[] _nodeToken = new int[DraftModelBase.MaxRoundNodes];
    readonly RoundTree _round = new(DraftModelBase.MaxRoundNodes);
    // [rows * vocab] log-probs of the last Expand: one row (a chain's), grown to the widest batch a tree asks for; a
    // buffer for a full round would be 64 MB at a 32k vocabulary.
    float[] _out;
    int _length;

    public NGramSession(int vocab, int capacity, NGramOptions o)
    {
        if (capacity < 1) throw new ArgumentOutOfRangeException(nameof(capacity), $"capacity must be positive, got {capacity}");
        (_vocab, _capacity, _maxN, _minN) = (vocab, capacity, o.MaxNgram, o.MinNgram);
        _text = new int[capacity + DraftModelBase.MaxRoundNodes];
        _out = new float[vocab];
    }

    public int Length => _length;
    public int VocabSize => _vocab;
    public bool ConcatDraftStates { get; set; } = true;   // no draft states: nothing to concatenate
    /// <summary>Tokens, round bookkeeping and the log-prob buffer as allocated so far (one row at the start; a tree's wider batches grow it).</summary>
    public long StateBytes => (long)_text.Length * sizeof(int) + (long)_out.Length * sizeof(float) + _nodeToken.Length * sizeof(int) + _round.Bytes;

    public void Commit(ReadOnlySpan<int> tokens, Tensor hidden) => Commit(tokens, ReadOnlySpan<float>.Empty);

    /// <summary>The target's states are not needed: only <paramref name="tokens"/> are kept.</summary>
    public void Commit(ReadOnlySpan<int> tokens, ReadOnlySpan<float> hidden)
    {
        if (_round.Count > 0) throw new InvalidOperationException("call EndRound before Commit");
        if (_length + tokens.Length > _capacity) throw new InvalidOperationException($"sequence of {_length + tokens.Length} positions exceeds the session capacity {_capacity}");
        foreach (var t in tokens)
            if ((uint)t >= (uint)_vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} is outside the vocabulary (size {_vocab})");
        tokens.CopyTo(_text.AsSpan(_length));
        _length += tokens.Length;
    }

    public Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
    {
        var rows = ExpandToBuffer(tokens, positions, parents);
        return tensor(rows.ToArray(), [tokens.Length, _vocab]);
    }

    public ReadOnlySpan<float> ExpandToBuffer(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
    {
        _round.Validate(tokens, positions, parents, _capacity + DraftModelBase.MaxRoundNodes);
        for (int i = 0; i < tokens.Length; i++)
        {
            if ((uint)tokens[i] >= (uint)_vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} is outside the vocabulary (size {_vocab})");
            if (parents[i] < 0 && positions[i] != _length)
                throw new ArgumentException($"the root sits at position {positions[i]}, but {_length} positions are committed", nameof(positions));
        }
        int first = _round.Add(positions, parents);
        if (_out.Length < tokens.Length * _vocab) _out = new float[tokens.Length * _vocab];
        var rows = _out.AsSpan(0, tokens.Length * _vocab);
        rows.Fill(float.NegativeInfinity);
        for (int i = 0; i < tokens.Length; i++)
        {
            int node = first + i;
            _nodeToken[node] = tokens[i];
            int proposal = Lookup(node);
            if (proposal >= 0) rows[i * _vocab + proposal] = 0f;   // probability 1
        }
        return rows;
    }

    /// <summary>
    /// The proposal after <paramref name="node"/>: the text is the committed tokens, then the node's ancestors and the
    /// node itself (written after the committed tokens in <see cref="_text"/>); returns the token that followed the most
    /// recent earlier occurrence of its longest matching suffix, or -1.
    /// </summary>
    int Lookup(int node)
    {
        int depth = 0;
        for (int a = node; a >= 0; a = _round.Parent(a)) depth++;
        int len = _length + depth;
        int w = len;
        for (int a = node; a >= 0; a = _round.Parent(a)) _text[--w] = _nodeToken[a];
        var text = _text.AsSpan(0, len);
        for (int n = Math.Min(_maxN, len - 1); n >= _minN; n--)
        {
            var suffix = text[(len - n)..];
            int last = suffix[^1];
            // An occurrence [s, s + n) that ends before the suffix does, so that a token follows it; the latest first.
            for (int end = len - 2; end >= n - 1; end--)
            {
                if (text[end] != last) continue;
                if (text.Slice(end - n + 1, n).SequenceEqual(suffix)) return text[end + 1];
            }
        }
        return -1;
    }

    public void EndRound() => _round.Clear();

    public void Dispose() { }
}
