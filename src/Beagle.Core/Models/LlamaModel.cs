using Beagle.Compute;
using TorchSharp;
using static TorchSharp.torch;

namespace Beagle.Models;

/// <summary>
/// A Llama-family decoder (llama2.c, Llama 2/3, Qwen2, Mistral) for inference, in fp32: the config, the tensors that
/// drafts and trainers share (embedding, LM head, final norm), and the target forward chosen once here by device
/// (<see cref="ITargetForward"/>: <see cref="CpuTargetForward"/> on the CPU, <see cref="TorchTargetForward"/> on any
/// other device). The public forwards validate their arguments (loudly) and delegate; masks reach the backend as
/// host-side structure (a bool array or a tree's parents), never as a tensor to read back.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    readonly ITargetForward _forward;

    public ModelConfig Config { get; }
    public Device Device { get; }
    /// <summary>[V, D], frozen. Shared with drafts (they must not modify it).</summary>
    public Tensor Embedding { get; }
    /// <summary>[V, D], frozen. Same tensor as <see cref="Embedding"/> when the model ties them.</summary>
    public Tensor LmHeadWeight { get; }
    /// <summary>[D] final RMSNorm weight.</summary>
    public Tensor FinalNormWeight { get; }

    public LlamaModel(LlamaWeights w, Device? device = null) : this(w, device ?? CPU, torchForward: false) { }

    /// <summary>
    /// A model on the CPU that runs the libtorch forward of other devices (<see cref="TorchTargetForward"/>), so the two
    /// backends can be held to each other on a machine without a GPU.
    /// </summary>
    internal static LlamaModel WithTorchForward(LlamaWeights w) => new(w, CPU, torchForward: true);

    LlamaModel(LlamaWeights w, Device device, bool torchForward)
    {
        Config = w.Config.Validate();
        Device = device;
        using (NewDisposeScope())
        using (no_grad())
        {
            Tensor Keep(Tensor t) => t.to(float32).to(Device).contiguous().DetachFromDisposeScope();
            Embedding = Keep(w.TokenEmbedding);
            LmHeadWeight = w.LmHead is null ? Embedding : Keep(w.LmHead);
            FinalNormWeight = Keep(w.FinalNorm);
        }
        _forward = Device.type == DeviceType.CPU && !torchForward ? new CpuTargetForward(this, w) : new TorchTargetForward(this, w);
    }

    /// <summary>Rotary and attention of short forwards in C# on the CPU (<see cref="ManagedAttention"/>); off = libtorch's ops (tests compare the two).</summary>
    internal bool UseManagedAttention
    {
        get => _forward is CpuTargetForward { UseManagedAttention: true };
        set
        {
            if (_forward is CpuTargetForward cpu) cpu.UseManagedAttention = value;
            else if (value) throw new InvalidOperationException($"the C# attention runs on the CPU only; this model is on {Device}");
        }
    }

    /// <summary>The LM head packed for the C# products ([D, V]), CPU only; drafts with the full vocabulary share it.</summary>
    internal PackedMatrix? PackedLmHead => (_forward as CpuTargetForward)?.LmHead;

    /// <summary>A fresh KV cache for one sequence of at most <paramref name="capacity"/> positions (default: the model's context).</summary>
    public KvCache NewCache(int? capacity = null)
    {
        int cap = capacity ?? Config.MaxSeqLen;
        if (cap <= 0 || cap > Config.MaxSeqLen) throw new ArgumentOutOfRangeException(nameof(capacity), $"capacity must be in [1, {Config.MaxSeqLen}], got {cap}");
        return new KvCache(Config, cap, Device);
    }

    // Caches of finished generations, kept for the next ones: a fresh cache is zero-filled memory the process must fault
    // in (stories5M: 9.4 MB per sequence, an eighth of a batched worker's time while generations came and went).
    // Reuse needs no clearing: every reader stops at the cache's Length (plus the slots a forward writes first).
    readonly Stack<KvCache> _idleCaches = new();
    long _idleCacheBytes;
    bool _disposed;
    /// <summary>The most memory idle caches may keep between generations; a cache beyond it is freed instead.</summary>
    internal const long MaxIdleCacheBytes = 256L << 20;

    /// <summary>
    /// A full-context KV cache for one generation: one a finished generation returned (<see cref="ReturnCache"/>), emptied,
    /// or a fresh one. Thread-safe: the engine's workers share the model. The caller owns it until it returns it.
    /// </summary>
    internal KvCache RentCache()
    {
        lock (_idleCaches)
        {
            if (_idleCaches.TryPop(out var cache))
            {
                _idleCacheBytes -= cache.Bytes;
                cache.Rewind(0);
                return cache;
            }
        }
        return NewCache();
    }

    /// <summary>Takes back a cache from <see cref="RentCache"/> (its owner must not touch it again): kept for reuse while
    /// the idle caches hold less than <see cref="MaxIdleCacheBytes"/>, otherwise (or once the model is disposed) freed.</summary>
    internal void ReturnCache(KvCache cache)
    {
        lock (_idleCaches)
        {
            if (!_disposed && cache.Capacity == Config.MaxSeqLen && _idleCacheBytes + cache.Bytes <= MaxIdleCacheBytes)
            {
                _idleCaches.Push(cache);
                _idleCacheBytes += cache.Bytes;
                return;
            }
        }
        cache.Dispose();
    }

    /// <summary>How many caches wait for reuse (tests).</summary>
    internal int IdleCaches { get { lock (_idleCaches) return _idleCaches.Count; } }

    /// <summary>
    /// Runs T new tokens of one sequence through the model, writing their keys and values into
    /// <paramref name="cache"/> at slots [cache.Length, cache.Length+T) and advancing cache.Length by T.
    /// </summary>
    /// <param name="tokens">T token ids.</param>
    /// <param name="positions">T rotary positions (for a chain: Length..Length+T-1; for a tree: Length + depth).</param>
    /// <param name="mask">[T, Length+T] bool, true = may attend; null = causal over the new tokens, all cached slots visible.
    /// Read to the host once; callers that build a mask in C# pass the array (<see cref="Forward(KvCache, ReadOnlySpan{int}, ReadOnlySpan{int}, bool[])"/>).</param>
    /// <param name="lastLogitsOnly">Compute logits for the last row only (prefill); Hidden still covers all T rows.</param>
    public ForwardOutput Forward(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, Tensor? mask = null, bool lastLogitsOnly = false)
    {
        int T = CheckRows(tokens, positions);
        int S = cache.Length + T;
        bool[]? allowed = null;
        if (mask is not null)
        {
            if (mask.shape is var ms && (ms.Length != 2 || ms[0] != T || ms[1] != S))   // (shape costs ~1 µs per read)
                throw new ArgumentException($"mask must be [{T}, {S}], got [{string.Join(", ", ms)}]", nameof(mask));
            if (mask.dtype != ScalarType.Bool)
                throw new ArgumentException($"mask must be a bool tensor (true = may attend), got {mask.dtype}", nameof(mask));
            using var host = mask.device_type == DeviceType.CPU && mask.is_contiguous() ? null : mask.cpu().contiguous();
            allowed = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, bool>((host ?? mask).bytes).ToArray();
        }
        return _forward.Forward(cache, tokens, positions, allowed, lastLogitsOnly);
    }

    /// <summary>
    /// <see cref="Forward(KvCache, ReadOnlySpan{int}, ReadOnlySpan{int}, Tensor?, bool)"/> with a mask built on the host:
    /// <paramref name="allowed"/> is [T, Length+T] row-major, true = may attend (e.g. a draft tree whose nodes sit in
    /// scattered cache slots). Returns logits [T, V] and hidden [T, D], owned by the caller.
    /// </summary>
    public ForwardOutput Forward(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, bool[] allowed)
    {
        ArgumentNullException.ThrowIfNull(allowed);
        int T = CheckRows(tokens, positions);
        int S = cache.Length + T;
        if (allowed.Length != T * S) throw new ArgumentException($"the mask must be [{T}, {S}] ({T * S} values), got {allowed.Length}", nameof(allowed));
        return _forward.Forward(cache, tokens, positions, allowed, lastLogitsOnly: false);
    }

    int CheckRows(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions)
    {
        int T = tokens.Length;
        if (T == 0) throw new ArgumentException("no tokens to run", nameof(tokens));
        if (positions.Length != T) throw new ArgumentException($"{positions.Length} positions for {T} tokens", nameof(positions));
        int vocab = Config.VocabSize, context = Config.MaxSeqLen;
        for (int i = 0; i < T; i++)
        {
            if ((uint)tokens[i] >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[i]} is outside the vocabulary (size {vocab})");
            if ((uint)positions[i] >= (uint)context) throw new ArgumentOutOfRangeException(nameof(positions), $"position {positions[i]} is beyond the context length {context}");
        }
        return T;
    }

    /// <summary>
    /// One new token for each of several sequences in one forward (see <see cref="ForwardBatch(IReadOnlyList{SequenceRows})"/>).
    /// Used to generate training data in batches; the caches' slots advance by one each.
    /// </summary>
    /// <param name="caches">B caches, one per sequence (distinct).</param>
    /// <param name="tokens">B token ids, row b for caches[b].</param>
    /// <returns>Logits [B, V] and hidden states [B, D], owned by the caller.</returns>
    public ForwardOutput ForwardBatch(IReadOnlyList<KvCache> caches, ReadOnlySpan<int> tokens)
    {
        int B = tokens.Length;
        if (B == 0 || caches.Count != B) throw new ArgumentException($"{caches.Count} caches for {B} tokens", nameof(caches));
        var rows = new SequenceRows[B];
        for (int b = 0; b < B; b++) rows[b] = new SequenceRows(caches[b], [tokens[b]], [caches[b].Length]);
        return ForwardBatch(rows);
    }

    /// <summary>
    /// New rows of several sequences in one forward: sequence b's T_b tokens are written into its own cache at slots
    /// [Length_b, Length_b + T_b) (each Length advances by T_b), and attend to that cache only. Each row's results are
    /// bit-identical to running its sequence alone through <see cref="Forward(KvCache, ReadOnlySpan{int}, ReadOnlySpan{int}, Tensor?, bool)"/>
    /// (BatchInvarianceTests), which is what makes batched greedy decoding give exactly the output of decoding alone.
    /// On the CPU a pass over the weights serves every sequence (<see cref="CpuTargetForward"/>); elsewhere each
    /// sequence runs its own forward.
    /// </summary>
    /// <param name="sequences">B sequences with distinct caches; a sequence's rows are a chain (causal) or a tree (parents).</param>
    /// <returns>Logits [ΣT_b, V] and hidden states [ΣT_b, D], sequence b's rows after those of sequences 0..b-1; owned by the caller.</returns>
    public ForwardOutput ForwardBatch(IReadOnlyList<SequenceRows> sequences)
    {
        int B = sequences.Count;
        if (B == 0) throw new ArgumentException("no sequences to run", nameof(sequences));
        for (int b = 0; b < B; b++)
        {
            var sq = sequences[b];
            int T = sq.Tokens.Length;
            if (T == 0) throw new ArgumentException($"sequence {b} has no tokens to run", nameof(sequences));
            if (sq.Positions.Length != T) throw new ArgumentException($"sequence {b}: {sq.Positions.Length} positions for {T} tokens", nameof(sequences));
            if (sq.IsTree)
            {
                var parents = sq.TreeParents;
                if (parents.Length != T) throw new ArgumentException($"sequence {b}: {parents.Length} parents for {T} tokens", nameof(sequences));
                for (int i = 0; i < T; i++)
                    if (i == 0 ? parents[i] != -1 : parents[i] < 0 || parents[i] >= i)
                        throw new ArgumentException($"sequence {b}, row {i}: parent {parents[i]}; row 0 is the root (-1), every other row's parent is an earlier row", nameof(sequences));
            }
            for (int i = 0; i < T; i++)
            {
                if ((uint)sq.Tokens[i] >= (uint)Config.VocabSize) throw new ArgumentOutOfRangeException(nameof(sequences), $"sequence {b}: token id {sq.Tokens[i]} is outside the vocabulary (size {Config.VocabSize})");
                if ((uint)sq.Positions[i] >= (uint)Config.MaxSeqLen) throw new ArgumentOutOfRangeException(nameof(sequences), $"sequence {b}: position {sq.Positions[i]} is beyond the context length {Config.MaxSeqLen}");
            }
            for (int c = 0; c < b; c++) if (ReferenceEquals(sequences[c].Cache, sq.Cache)) throw new ArgumentException($"sequences {c} and {b} share one cache", nameof(sequences));
            if (sq.Cache.Length + T > sq.Cache.Capacity)
                throw new InvalidOperationException($"sequence {b}: {sq.Cache.Length + T} positions exceed its cache's capacity ({sq.Cache.Capacity})");
        }
        return _forward.ForwardBatch(sequences);
    }

    /// <summary>
    /// Top hidden states of a batch of sequences, causal, no cache (feature extraction for training).
    /// tokens: [B, T] int64, positions 0..T-1. Returns [B, T, D], owned by the caller.
    /// </summary>
    public Tensor HiddenStates(Tensor tokens)
    {
        if (tokens.dim() != 2) throw new ArgumentException("tokens must be [B, T]", nameof(tokens));
        if (tokens.shape[1] > Config.MaxSeqLen) throw new ArgumentException($"sequence length {tokens.shape[1]} exceeds the context length {Config.MaxSeqLen}");
        return _forward.HiddenStates(tokens);
    }

    /// <summary>Logits through the frozen LM head: hidden [..., D] → [..., V].</summary>
    public Tensor Logits(Tensor hidden) => _forward.Logits(hidden);

    public void Dispose()
    {
        lock (_idleCaches)
        {
            _disposed = true;
            while (_idleCaches.TryPop(out var cache)) cache.Dispose();
            _idleCacheBytes = 0;
        }
        _forward.Dispose();
        FinalNormWeight.Dispose();
        if (!ReferenceEquals(LmHeadWeight, Embedding)) LmHeadWeight.Dispose();
        Embedding.Dispose();
    }
}
