using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Beagle.Models;

/// <summary>
/// What one target forward returns: logits [T, V] (or [1, V] when only the last row was asked for) and hidden [T, D],
/// the top hidden state of every position, i.e. the LM head's input (after the final norm). The caller owns it and
/// disposes it once (outside the forward's dispose scope); disposing frees everything below, and any use after that
/// throws <see cref="ObjectDisposedException"/> (the output is a handle to buffers that are reused).
///
/// Two forms, one interface. A libtorch forward returns tensors (<see cref="ForwardOutput(Tensor, Tensor)"/>); the CPU
/// forward returns host arrays rented from a pool, so that a decoding round allocates no managed object for its output.
/// Readers on the host (sampling, verification, array draft sessions) read <see cref="HostLogits"/> and
/// <see cref="HostHidden"/>: row-major floats, valid until Dispose, without a copy from either form (except the one
/// host copy of a tensor off the CPU). <see cref="Logits"/> and <see cref="Hidden"/> give tensors: the libtorch form's
/// own, or for the host form a CPU copy made on first request (tensor draft sessions, training, tests), owned by this
/// output (dispose the output, not the tensor).
/// </summary>
public readonly struct ForwardOutput : IDisposable
{
    readonly ForwardBuffers? _buffers;
    readonly int _version;   // the buffers' use this handle belongs to: a stale handle finds a newer one and throws

    /// <summary>The libtorch form: takes ownership of both tensors (freed on Dispose).</summary>
    public ForwardOutput(Tensor logits, Tensor hidden) : this(ForwardBuffers.OfTensors(logits, hidden)) { }

    internal ForwardOutput(ForwardBuffers buffers) { _buffers = buffers; _version = buffers.Version; }

    ForwardBuffers Live => _buffers is { } b && b.Version == _version ? b : throw new ObjectDisposedException(nameof(ForwardOutput), "this forward output was disposed (its buffers may be serving another forward)");

    /// <summary>Logits as a tensor [T or 1, V], owned by this output.</summary>
    public Tensor Logits => Live.LogitsTensor;
    /// <summary>Hidden states as a tensor [T, D], owned by this output.</summary>
    public Tensor Hidden => Live.HiddenTensor;
    /// <summary>Logits [T or 1, V] as row-major host floats, valid until Dispose.</summary>
    public ReadOnlySpan<float> HostLogits => Live.HostLogits;
    /// <summary>Hidden states [T, D] as row-major host floats, valid until Dispose.</summary>
    public ReadOnlySpan<float> HostHidden => Live.HostHidden;

    /// <summary>Frees the tensors or returns the host buffers to their pool. A second Dispose does nothing.</summary>
    public void Dispose() { if (_buffers is { } b && b.Version == _version) b.Release(); }
}

/// <summary>
/// The storage behind a <see cref="ForwardOutput"/>. The host form's shells are pooled per thread (forwards of
/// different generators may run on different threads; a shell released on another thread joins that thread's pool)
/// and their arrays rented from the CPU forward's pool (<c>HostPool</c>, per thread too);
/// each release bumps <see cref="Version"/>, which invalidates every handle of the use that ended.
/// </summary>
internal sealed class ForwardBuffers
{
    const int MaxPooled = 8;   // shells kept per thread: more than the outputs alive at once in decoding
    [ThreadStatic] static Stack<ForwardBuffers>? t_free;   // per thread, like the arrays (Compute.HostPool)

    public int Version { get; private set; }
    bool _host;
    Tensor? _logits, _hidden;           // the tensor form's own; the host form's copies, made on request
    Tensor? _logitsCopy, _hiddenCopy;   // the tensor form off the CPU (or not contiguous float32): host copies for the spans
    float[]? _hostLogits, _hostHidden;  // the host form: rented
    int _logitRows, _hiddenRows, _vocab, _dim;

    public static ForwardBuffers OfTensors(Tensor logits, Tensor hidden)
        => new() { _logits = logits, _hidden = hidden };

    /// <summary>A host-form shell with arrays for logits [logitRows, vocab] and hidden [hiddenRows, dim] (contents undefined).</summary>
    public static ForwardBuffers RentHost(int logitRows, int vocab, int hiddenRows, int dim)
    {
        var b = t_free is { Count: > 0 } free ? free.Pop() : new ForwardBuffers();
        b._host = true;
        (b._logitRows, b._vocab, b._hiddenRows, b._dim) = (logitRows, vocab, hiddenRows, dim);
        b._hostLogits = Compute.HostPool.Floats.Rent(logitRows * vocab);
        b._hostHidden = Compute.HostPool.Floats.Rent(hiddenRows * dim);
        return b;
    }

    /// <summary>The host form's arrays to fill (the forward writes its results here before handing out the output).</summary>
    public Span<float> WritableLogits => _hostLogits.AsSpan(0, _logitRows * _vocab);
    /// <summary>The same arrays whole (rented: longer than the rows), for kernels that take arrays.</summary>
    public float[] LogitsArray => _hostLogits!;
    public float[] HiddenArray => _hostHidden!;
    public Span<float> WritableHidden => _hostHidden.AsSpan(0, _hiddenRows * _dim);

    public ReadOnlySpan<float> HostLogits => _host ? WritableLogits : Floats(_logits!, ref _logitsCopy);
    public ReadOnlySpan<float> HostHidden => _host ? WritableHidden : Floats(_hidden!, ref _hiddenCopy);
    public Tensor LogitsTensor => _logits ??= HostTensor(WritableLogits, _logitRows, _vocab);
    public Tensor HiddenTensor => _hidden ??= HostTensor(WritableHidden, _hiddenRows, _dim);

    /// <summary>A CPU tensor copy of host rows, outside any dispose scope (this output owns it, not the caller's scope).</summary>
    static Tensor HostTensor(ReadOnlySpan<float> values, int rows, int cols)
    {
        var t = empty(rows, cols).DetachFromDisposeScope();
        values.CopyTo(MemoryMarshal.Cast<byte, float>(t.bytes));
        return t;
    }

    /// <summary>
    /// A tensor's float32 values in place when it is contiguous float32 on the CPU (a forward's outputs are); otherwise
    /// from a contiguous CPU copy made once and kept until release. In a dispose scope: the chain's temporaries are
    /// otherwise unreferenced while the next native call runs, and a garbage collection could free one mid-call.
    /// </summary>
    static ReadOnlySpan<float> Floats(Tensor t, ref Tensor? copy)
    {
        if (copy is null && !(t.device_type == TorchSharp.DeviceType.CPU && t.dtype == ScalarType.Float32 && t.is_contiguous()))
        {
            using var scope = NewDisposeScope();
            copy = t.detach().to(ScalarType.Float32).cpu().contiguous().MoveToOuterDisposeScope().DetachFromDisposeScope();
        }
        return MemoryMarshal.Cast<byte, float>((copy ?? t).bytes);
    }

    public void Release()
    {
        Version++;
        _logits?.Dispose(); _hidden?.Dispose(); _logitsCopy?.Dispose(); _hiddenCopy?.Dispose();
        _logits = _hidden = _logitsCopy = _hiddenCopy = null;
        if (!_host) return;
        Compute.HostPool.Floats.Return(_hostLogits!); Compute.HostPool.Floats.Return(_hostHidden!);
        _hostLogits = _hostHidden = null;
        var free = t_free ??= new Stack<ForwardBuffers>();
        if (free.Count < MaxPooled) free.Push(this);
    }
}

/// <summary>
/// One sequence's new rows in a batched forward (<see cref="LlamaModel.ForwardBatch(IReadOnlyList{SequenceRows})"/>).
/// It views the caller's arrays (no copy): they must stay unchanged until the forward returns. A decode strategy
/// passes its own reused buffers with a row count, so proposing a round allocates nothing.
/// </summary>
public readonly struct SequenceRows
{
    readonly int[] _tokens, _positions;
    readonly int[]? _parents;
    readonly int _count, _positionCount, _parentCount;

    /// <param name="cache">The sequence's own cache; its rows go to slots [Cache.Length, Cache.Length + T).</param>
    /// <param name="tokens">T token ids.</param>
    /// <param name="positions">T rotary positions (a chain: Length..Length+T-1; a tree: Length + depth).</param>
    /// <param name="parents">null: the rows are a chain (causal). Else T parent rows of a tree (-1 for row 0, every
    /// other row's parent an earlier row): a row sees the cached slots, its ancestors and itself.</param>
    public SequenceRows(KvCache cache, int[] tokens, int[] positions, int[]? parents = null)
        : this(cache, tokens, tokens.Length, positions, positions.Length, parents, parents?.Length ?? 0) { }

    /// <summary>The first <paramref name="count"/> values of each array (buffers longer than this round's rows).</summary>
    internal SequenceRows(KvCache cache, int[] tokens, int[] positions, int[]? parents, int count)
        : this(cache, tokens, count, positions, count, parents, parents is null ? 0 : count) { }

    SequenceRows(KvCache cache, int[] tokens, int count, int[] positions, int positionCount, int[]? parents, int parentCount)
    {
        ArgumentNullException.ThrowIfNull(cache); ArgumentNullException.ThrowIfNull(tokens); ArgumentNullException.ThrowIfNull(positions);
        if (count > tokens.Length || positionCount > positions.Length || parentCount > (parents?.Length ?? 0))
            throw new ArgumentException($"{count} rows, but the arrays hold {tokens.Length} tokens, {positions.Length} positions, {parents?.Length ?? 0} parents");
        Cache = cache;
        (_tokens, _count, _positions, _positionCount, _parents, _parentCount) = (tokens, count, positions, positionCount, parents, parentCount);
    }

    public KvCache Cache { get; }
    /// <summary>T token ids.</summary>
    public ReadOnlySpan<int> Tokens => _tokens.AsSpan(0, _count);
    /// <summary>T rotary positions.</summary>
    public ReadOnlySpan<int> Positions => _positions.AsSpan(0, _positionCount);
    /// <summary>Whether the rows are a tree (parents given) rather than a causal chain.</summary>
    public bool IsTree => _parents is not null;
    /// <summary>A tree's T parent rows; empty for a chain (ask <see cref="IsTree"/>).</summary>
    public ReadOnlySpan<int> TreeParents => _parents.AsSpan(0, _parentCount);
}

/// <summary>
/// How a <see cref="LlamaModel"/> runs: the target forward, chosen once when the model is built, by device
/// (<c>Compute/CpuTargetForward</c>: packed products and C# attention on the CPU; <see cref="TorchTargetForward"/>:
/// libtorch ops on any other device). An implementation owns the weights in the form its kernels read (folded, packed
/// or transposed); the model keeps the config and the tensors drafts and trainers share (embedding, LM head, final
/// norm). A new backend is one more implementation and one more line where the model picks it.
///
/// The arguments arrive validated by <see cref="LlamaModel"/> (token ids in the vocabulary, positions in the context,
/// masks and parents well formed, distinct caches); an implementation reserves the cache slots it writes
/// (<see cref="KvCache.Advance"/>). Masks are host-side: a forward of one sequence takes a [T, Length + T] row-major
/// bool array (true = may attend), a batched forward each sequence's tree parents; a backend turns them into what its
/// attention reads (the C# attention's list of hidden slots, libtorch's additive mask) once per forward.
/// </summary>
internal interface ITargetForward : IDisposable
{
    /// <summary>T new tokens of one sequence, written at cache slots [Length, Length + T).</summary>
    /// <param name="allowed">[T, Length + T] row-major, true = may attend; null = causal (and the sliding window, if any).</param>
    /// <param name="lastLogitsOnly">Logits of the last row only ([1, V]); Hidden still covers all T rows.</param>
    /// <returns>Logits [T or 1, V], hidden [T, D], owned by the caller.</returns>
    ForwardOutput Forward(KvCache cache, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, bool[]? allowed, bool lastLogitsOnly);

    /// <summary>New rows of several sequences, each into its own cache; every row's results bit-identical to its sequence run alone.</summary>
    /// <returns>Logits [ΣT_b, V], hidden [ΣT_b, D], sequence b's rows after those of 0..b-1, owned by the caller.</returns>
    ForwardOutput ForwardBatch(IReadOnlyList<SequenceRows> sequences);

    /// <summary>Causal top hidden states without a cache, for training: tokens [B, T] int64 → [B, T, D], owned by the caller.</summary>
    Tensor HiddenStates(Tensor tokens);

    /// <summary>Logits through the frozen LM head: hidden [..., D] → [..., V] (autograd flows to hidden, not to the head).</summary>
    Tensor Logits(Tensor hidden);
}
