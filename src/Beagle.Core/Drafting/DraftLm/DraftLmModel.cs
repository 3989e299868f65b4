using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Models;
using Beagle.Tokenization;
using static TorchSharp.torch;

namespace Beagle.Drafting.DraftLm;

/// <summary>
/// A smaller language model of the target's vocabulary drafting for it (Leviathan et al. 2023; Chen et al. 2023): no
/// training, any pair that shares a tokenizer. The draft model runs in its own KV cache (<see cref="DraftLmSession"/>)
/// and sees only tokens, never the target's states. Its next-token log-probabilities are the draft distribution the tree
/// search ranks; the tree's tokens are then chosen deterministically (top-k), as with every draft here.
/// </summary>
public sealed class DraftLmModel : IDraftModel, IDraftIdentity
{
    readonly bool _ownsModel;

    /// <param name="model">The draft model; disposed with this draft when <paramref name="ownsModel"/>.</param>
    /// <param name="target">The target it drafts for: checked for the same vocabulary and a context at least as long.</param>
    /// <param name="tokenizers">The draft's and the target's tokenizers, when known: checked to be the same vocabulary
    /// (every token's bytes and every special token), so that a token id means the same text to both models.</param>
    /// <exception cref="ArgumentException">The draft model is not compatible with the target (the message says how).</exception>
    public DraftLmModel(LlamaModel model, LlamaModel target, bool ownsModel = true, (ITokenizer Draft, ITokenizer Target)? tokenizers = null, string? name = null)
    {
        CheckCompatible(model.Config, target.Config, tokenizers, name ?? "the draft model");
        Model = model; _ownsModel = ownsModel;
        Name = name ?? "draft model";
        var c = model.Config;
        // Identity for the budget cache: the draft's shape and a hash of its embedding (the same fingerprint a trained
        // draft records of its target), so another draft model, or this one retrained, is calibrated afresh.
        var fp = TargetFingerprint.Of(model);
        Identity = $"draft-lm|{c.Dim}x{c.Layers}|{fp.EmbeddingSha256[..16]}";
    }

    /// <summary>
    /// Loads a draft model from <paramref name="path"/> (a llama2.c .bin file or a Hugging Face folder, with its
    /// tokenizer found the same way as a target's; or a known model's name such as stories260K) for
    /// <paramref name="target"/>, on the target's device.
    /// </summary>
    public static DraftLmModel Load(string path, LlamaModel target, ITokenizer targetTokenizer, string? tokenizerPath = null)
    {
        var files = Runtime.ModelLoader.Resolve(new Runtime.ModelSpec { Target = path, Tokenizer = tokenizerPath, NoDraft = true });
        var loaded = TargetLoader.Load(files.Target, files.Tokenizer, target.Device);
        try { return new DraftLmModel(loaded.Model, target, ownsModel: true, (loaded.Tokenizer, targetTokenizer), name: path); }
        catch { loaded.Dispose(); throw; }
    }

    /// <summary>The draft language model.</summary>
    public LlamaModel Model { get; }
    /// <summary>Where it came from, for messages.</summary>
    public string Name { get; }
    public string Architecture => "draft-lm";
    public int DraftVocabSize => Model.Config.VocabSize;
    public IReadOnlyList<int>? DraftToTarget => null;
    public string Identity { get; }

    /// <summary>The draft model's parameters (fp32; a tied LM head counted once) and its rotary tables.</summary>
    public long WeightBytes
    {
        get
        {
            var c = Model.Config;
            long perLayer = (long)c.Dim * (c.QDim + 2 * c.KvDim) + (long)c.QDim * c.Dim + 3L * c.Dim * c.HiddenDim + 2L * c.Dim
                + (c.QkvBias ? c.QDim + 2 * c.KvDim : 0);
            long head = ReferenceEquals(Model.LmHeadWeight, Model.Embedding) ? 0 : (long)c.VocabSize * c.Dim;
            long rope = 2L * c.MaxSeqLen * c.EffectiveHeadDim;
            return sizeof(float) * ((long)c.VocabSize * c.Dim + head + c.Layers * perLayer + c.Dim + rope);
        }
    }

    public IDraftSession StartSession(int capacity) => new DraftLmSession(Model, capacity) { KeepAcceptedSlots = KeepAcceptedSlots };

    /// <summary>See <see cref="DraftLmSession.KeepAcceptedSlots"/> (tests and measurements).</summary>
    internal bool KeepAcceptedSlots { get; init; } = true;

    /// <summary>
    /// Whether a draft model can draft for a target: the same vocabulary size, BOS and EOS ids, a context at least as
    /// long as the target's (a draft proposes at the target's positions), and, when both tokenizers are given, the same
    /// bytes for every token.
    /// </summary>
    public static void CheckCompatible(ModelConfig draft, ModelConfig target, (ITokenizer Draft, ITokenizer Target)? tokenizers = null, string name = "the draft model")
    {
        string Why(string what) => $"{name} cannot draft for this target: {what}. A draft model must use the target's tokenizer (the same vocabulary, token for token)";
        if (draft.VocabSize != target.VocabSize) throw new ArgumentException(Why($"its vocabulary has {draft.VocabSize} tokens, the target's {target.VocabSize}"));
        if (draft.BosId != target.BosId) throw new ArgumentException(Why($"its BOS id is {draft.BosId}, the target's {target.BosId}"));
        if (!draft.EosIds.SequenceEqual(target.EosIds)) throw new ArgumentException(Why($"its EOS ids are [{string.Join(", ", draft.EosIds)}], the target's [{string.Join(", ", target.EosIds)}]"));
        if (draft.MaxSeqLen < target.MaxSeqLen)
            throw new ArgumentException($"{name} cannot draft for this target: its context is {draft.MaxSeqLen} positions, the target's {target.MaxSeqLen} (a draft must reach every position the target does)");
        if (tokenizers is not ({ } dt, { } tt)) return;
        if (dt.VocabSize != tt.VocabSize) throw new ArgumentException(Why($"its tokenizer has {dt.VocabSize} tokens, the target's {tt.VocabSize}"));
        if (dt.BosId != tt.BosId) throw new ArgumentException(Why($"its tokenizer's BOS id is {dt.BosId}, the target's {tt.BosId}"));
        for (int t = 0; t < dt.VocabSize; t++)
        {
            if (dt.IsSpecial(t) != tt.IsSpecial(t)) throw new ArgumentException(Why($"token {t} is special for one tokenizer and not the other"));
            if (!dt.TokenBytes(t, -1).SequenceEqual(tt.TokenBytes(t, -1)))
                throw new ArgumentException(Why($"token {t} is \"{System.Text.Encoding.UTF8.GetString(dt.TokenBytes(t, -1))}\" for it and \"{System.Text.Encoding.UTF8.GetString(tt.TokenBytes(t, -1))}\" for the target"));
        }
    }

    public void Dispose() { if (_ownsModel) Model.Dispose(); }
}

/// <summary>
/// One sequence's draft-model state: a KV cache of the draft model whose slots [0, cached) hold the committed tokens the
/// draft has run so far, followed during a round by one scratch slot per expanded tree node.
/// <list type="bullet">
/// <item>Committed tokens are run lazily: the first Expand of a round runs the ones not yet in the cache together with
/// the root in one forward (causal), so a round costs one draft forward per tree level, the catch-up included.</item>
/// <item>Deeper nodes run in scratch slots past the committed ones, each seeing the committed context and its own
/// ancestors (a tree mask; none for a chain, where every earlier scratch slot is an ancestor).</item>
/// <item>Commit keeps the accepted path's scratch slots in place (<see cref="KvCache.KeepSlots"/>, the same move the
/// target's cache makes) and drops the rest; accepted tokens the draft never ran (the last accepted node and the bonus
/// token) wait for the next round's catch-up. The scratch records outlive EndRound until that Commit, so the KV of
/// accepted nodes is not computed twice.</item>
/// </list>
/// </summary>
internal sealed class DraftLmSession : IDraftSession, IArrayDraftSession
{
    readonly LlamaModel _model;
    readonly KvCache _cache;
    readonly int _capacity, _vocab;
    readonly int[] _tokens;          // [capacity] committed tokens
    readonly RoundTree _round = new(DraftModelBase.MaxRoundNodes);
    readonly int[] _nodeToken = new int[DraftModelBase.MaxRoundNodes];
    readonly int[] _nodeSlot = new int[DraftModelBase.MaxRoundNodes];
    float[] _out;                    // [rows * vocab] log-probs of the last Expand: one row, grown to the widest batch a tree asks for
    int _length;                     // committed tokens
    int _cached;                     // committed tokens whose K/V are in the cache, slots [0, _cached)
    bool _roundOpen;                 // between the first Expand of a round and EndRound
    bool _chain = true;              // every scratch node so far is the child of the one before

    /// <summary>
    /// Keep the accepted nodes' scratch slots at Commit (default). Off: drop them and run the accepted tokens again with
    /// the next round's root (the alternative measured against it; docs/benchmarks.md).
    /// </summary>
    internal bool KeepAcceptedSlots { get; init; } = true;

    public DraftLmSession(LlamaModel model, int capacity)
    {
        if (capacity < 1) throw new ArgumentOutOfRangeException(nameof(capacity), $"capacity must be positive, got {capacity}");
        if (capacity > model.Config.MaxSeqLen)
            throw new ArgumentOutOfRangeException(nameof(capacity), $"a session of {capacity} positions is longer than the draft model's context ({model.Config.MaxSeqLen})");
        _model = model; _capacity = capacity; _vocab = model.Config.VocabSize;
        // The round's scratch slots lie past the committed ones: room for a full round beyond the capacity (the cache's
        // own size is not bounded by the rotary tables; positions are, and they stay below the capacity).
        _cache = new KvCache(model.Config, capacity + DraftModelBase.MaxRoundNodes, model.Device);
        _tokens = new int[capacity];
        _out = new float[_vocab];
    }

    public int Length => _length;
    public int VocabSize => _vocab;
    public bool ConcatDraftStates { get; set; } = true;   // a draft model's nodes always see their ancestors

    /// <summary>The KV cache (capacity plus a round's scratch slots), tokens, bookkeeping and the log-prob buffer as allocated so far (one row at the start; a tree's wider batches grow it).</summary>
    public long StateBytes
    {
        get
        {
            var c = _model.Config;
            long kv = 2L * c.Layers * c.KvHeads * c.EffectiveHeadDim * (_capacity + DraftModelBase.MaxRoundNodes) * sizeof(float);
            return kv + (long)_out.Length * sizeof(float) + ((long)_tokens.Length + 2 * DraftModelBase.MaxRoundNodes) * sizeof(int) + _round.Bytes;
        }
    }

    public void Commit(ReadOnlySpan<int> tokens, Tensor hidden) => Commit(tokens, ReadOnlySpan<float>.Empty);

    /// <summary>The target's states are not used: the draft model computes its own from the tokens.</summary>
    public void Commit(ReadOnlySpan<int> tokens, ReadOnlySpan<float> hidden)
    {
        if (_roundOpen) throw new InvalidOperationException("call EndRound before Commit");
        int m = tokens.Length;
        if (_length + m > _capacity) throw new InvalidOperationException($"sequence of {_length + m} positions exceeds the session capacity {_capacity}");
        foreach (var t in tokens)
            if ((uint)t >= (uint)_vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} is outside the vocabulary (size {_vocab})");
        // The accepted path, followed through the last round's nodes: node 0 is the root (parent -1, the first token),
        // then each token is the child of the previous node that carries it. Their scratch slots are kept in order.
        int kept = 0;
        if (KeepAcceptedSlots && _round.Count > 0 && _cached == _length && m > 0)
        {
            Span<long> slots = stackalloc long[Math.Min(m, _round.Count)];
            int cur = -1;
            for (int i = 0; i < slots.Length; i++)
            {
                int next = -1;
                for (int e = cur + 1; e < _round.Count; e++)   // a child is expanded after its parent
                    if (_round.Parent(e) == cur && _nodeToken[e] == tokens[i] && _round.Position(e) == _length + i) { next = e; break; }
                if (next < 0) break;
                slots[kept++] = _nodeSlot[next]; cur = next;
            }
            if (kept > 0) _cache.KeepSlots(_cached, slots[..kept]);
        }
        if (kept == 0) _cache.Rewind(_cached);
        _cached += kept;
        tokens.CopyTo(_tokens.AsSpan(_length));
        _length += m;
        _round.Clear(); _chain = true;
    }

    public Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
    {
        var rows = ExpandToBuffer(tokens, positions, parents);
        return tensor(rows.ToArray(), [tokens.Length, _vocab]);
    }

    public ReadOnlySpan<float> ExpandToBuffer(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
    {
        if (!_roundOpen)
        {
            // A new round: the last round's scratch (kept for a Commit that did not come) is dropped.
            _round.Clear(); _chain = true;
            _cache.Rewind(_cached);
            _roundOpen = true;
        }
        _round.Validate(tokens, positions, parents, _capacity);
        int n = tokens.Length;
        for (int i = 0; i < n; i++)
        {
            if ((uint)tokens[i] >= (uint)_vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} is outside the vocabulary (size {_vocab})");
            if (parents[i] < 0 && positions[i] != _length)
                throw new ArgumentException($"the root sits at position {positions[i]}, but {_length} positions are committed", nameof(positions));
        }
        int first = _round.Add(positions, parents);
        bool rootOnly = n == 1 && parents[0] < 0 && first == 0;
        if (!rootOnly && _cached < _length) CatchUp();
        for (int i = 0; i < n; i++)
        {
            _nodeToken[first + i] = tokens[i];
            if (_chain && parents[i] != first + i - 1) _chain = false;
        }

        if (_out.Length < n * _vocab) _out = new float[n * _vocab];
        var rows = _out.AsSpan(0, n * _vocab);
        if (rootOnly)
        {
            // The committed tokens the draft has not run yet, then the root, in one causal forward; only the root's logits.
            int pending = _length - _cached;
            var ids = new int[pending + 1]; var pos = new int[pending + 1];
            for (int j = 0; j < pending; j++) { ids[j] = _tokens[_cached + j]; pos[j] = _cached + j; }
            ids[pending] = tokens[0]; pos[pending] = positions[0];
            using var o = _model.Forward(_cache, ids, pos, lastLogitsOnly: true);
            _cached = _length;
            _nodeSlot[0] = _cache.Length - 1;
            LogSoftmaxRows(o.Logits, rows, 1);
            return rows;
        }

        int start = _cache.Length;
        for (int i = 0; i < n; i++) _nodeSlot[first + i] = start + i;
        using (var o = _chain ? _model.Forward(_cache, tokens, positions) : _model.Forward(_cache, tokens, positions, TreeAllowed(first, n, start)))
            LogSoftmaxRows(o.Logits, rows, n);
        return rows;
    }

    /// <summary>Runs the committed tokens not yet in the cache (when a round did not start with the root alone).</summary>
    void CatchUp()
    {
        // Scratch slots of this round would be overwritten: a round's first batch runs before any of them exist.
        if (_cache.Length != _cached) throw new InvalidOperationException("the draft cache holds scratch slots before its committed tokens are run");
        int pending = _length - _cached;
        var pos = new int[pending];
        for (int j = 0; j < pending; j++) pos[j] = _cached + j;
        using var _ = _model.Forward(_cache, _tokens.AsSpan(_cached, pending), pos, lastLogitsOnly: true);
        _cached = _length;
    }

    /// <summary>[n, start + n] bool, row-major: each new node sees the committed slots and the scratch slots of its ancestors and itself.</summary>
    bool[] TreeAllowed(int first, int n, int start)
    {
        int s = start + n;
        var data = new bool[n * s];
        for (int i = 0; i < n; i++)
        {
            Array.Fill(data, true, i * s, _cached);
            for (int a = first + i; a >= 0; a = _round.Parent(a)) data[i * s + _nodeSlot[a]] = true;
        }
        return data;
    }

    /// <summary>Log-softmax of the first <paramref name="n"/> rows of logits [n, V] into <paramref name="rows"/>.</summary>
    void LogSoftmaxRows(Tensor logits, Span<float> rows, int n)
    {
        using var host = HostFloats.Of(logits);
        var src = host.Span;
        for (int r = 0; r < n; r++)
        {
            var x = src.Slice(r * _vocab, _vocab); var y = rows.Slice(r * _vocab, _vocab);
            float max = float.NegativeInfinity;
            foreach (var v in x) if (v > max) max = v;
            double sum = 0;
            foreach (var v in x) sum += Math.Exp(v - max);
            float lse = max + (float)Math.Log(sum);
            for (int j = 0; j < _vocab; j++) y[j] = x[j] - lse;
        }
    }

    public void EndRound() => _roundOpen = false;   // the round's records wait for Commit (see the class summary)

    public void Dispose() => _cache.Dispose();
}
