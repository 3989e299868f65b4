using static TorchSharp.torch;

namespace Beagle.Drafting;

/// <summary>
/// A draft model (any registered architecture, or any other implementation) that proposes tokens for the target to verify. A draft sees the target only
/// through what it is given here: the target's frozen embedding and LM head (shared, never copied) and the target's
/// top hidden states of accepted positions.
/// </summary>
public interface IDraftModel : IDisposable
{
    /// <summary>The architecture's name: a registered one's (<see cref="DraftArchitectures"/>: "beagle", "eagle2", ...) for a checkpoint draft, any descriptive name otherwise.</summary>
    string Architecture { get; }

    /// <summary>Size of the draft's output vocabulary (the target's, or a reduced one; see <see cref="DraftToTarget"/>).</summary>
    int DraftVocabSize { get; }

    /// <summary>Maps a draft-vocabulary index to a target token id; null when the draft predicts the full target vocabulary.</summary>
    IReadOnlyList<int>? DraftToTarget { get; }

    /// <summary>Per-sequence drafting state (its own caches), for one generation. Single-threaded, like the target.</summary>
    IDraftSession StartSession(int capacity);

    /// <summary>
    /// Bytes the draft holds beyond the target: its own weights and tables, plus the weight copies its sessions share
    /// (built on the first session, so this grows once a session has started). The target's embedding and LM head,
    /// which a draft reads in place, are the target's and are not counted; host copies of them are.
    /// </summary>
    long WeightBytes { get; }
}

/// <summary>
/// The draft's state for one sequence. The protocol, per generation:
/// <list type="number">
/// <item><see cref="Commit"/> the prompt's tokens and true states (after prefill).</item>
/// <item>Each round: <see cref="Expand"/> the root (the pending token, parent -1), then batches of deeper nodes whose
///   parents are earlier nodes of the same round; then <see cref="EndRound"/>.</item>
/// <item>After verification: <see cref="Commit"/> the newly accepted tokens with their true states.</item>
/// </list>
/// </summary>
public interface IDraftSession : IDisposable
{
    /// <summary>Number of committed positions.</summary>
    int Length { get; }

    /// <summary>
    /// Appends accepted positions [Length, Length+m): <paramref name="tokens"/> are the tokens at those positions and
    /// <paramref name="hidden"/> [m, D] the target's top hidden states there (the LM head's input). The caller keeps
    /// ownership of <paramref name="hidden"/>; the session copies what it keeps.
    /// </summary>
    void Commit(ReadOnlySpan<int> tokens, Tensor hidden);

    /// <summary>
    /// One draft forward over a batch of tree nodes of this round. Node j (numbered in call order across the round,
    /// starting at 0) has token <paramref name="tokens"/>[i] at rotary position <paramref name="positions"/>[i];
    /// <paramref name="parents"/>[i] is the round number of its parent node, or -1 for the root (the pending token,
    /// whose parent is the committed context). A node sees the committed context and (with concatenation on) the
    /// draft states of its ancestors. Returns log-probabilities [N, DraftVocabSize] of the token that follows each
    /// node, owned by the caller.
    /// </summary>
    Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents);

    /// <summary>Discards every draft state of the round; committed state is kept.</summary>
    void EndRound();

    /// <summary>Whether deeper nodes see their ancestors' draft states ("concate"; default on).</summary>
    bool ConcatDraftStates { get; set; }

    /// <summary>
    /// Bytes of this session's own buffers, allocated when it starts: key/value or state slots for its capacity and for
    /// a round's draft states, the round's bookkeeping, and any per-session weight snapshot. Shared weights are the
    /// draft's (<see cref="IDraftModel.WeightBytes"/>).
    /// </summary>
    long StateBytes { get; }

    /// <summary>
    /// The session's plain-array path, or null when it has none. The tree builder and the speculative strategy ask
    /// here, and only here, whether they can skip the tensors (no tensor op, no allocation per draft step). By default
    /// a session that implements <see cref="IArrayDraftSession"/> offers itself; a session that wraps another passes
    /// the inner one's on, and a session can withhold its path by returning null.
    /// </summary>
    IArrayDraftSession? ArrayPath => this as IArrayDraftSession;
}

/// <summary>
/// The plain-array path of a session that computes on the CPU in arrays (the managed kernels), offered through
/// <see cref="IDraftSession.ArrayPath"/>: the tree builder reads its log-probs [N * VocabSize] directly and picks the
/// top-k in C#, skipping four tensor ops per draft step; verification hands the accepted rows over without a tensor.
/// The same protocol as <see cref="IDraftSession"/> (the same round, the same node numbering).
/// </summary>
public interface IArrayDraftSession
{
    /// <summary>Columns of a log-prob row: the draft vocabulary's size.</summary>
    int VocabSize { get; }
    /// <summary>
    /// <see cref="IDraftSession.Expand"/> into a buffer the session owns and reuses: log-probs [N * VocabSize], valid
    /// until the session's next Expand (copy what must outlive it). No allocation per draft step.
    /// </summary>
    ReadOnlySpan<float> ExpandToBuffer(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents);
    /// <summary><see cref="IDraftSession.Commit"/> from a plain array: <paramref name="hidden"/> is [m * D], row-major.</summary>
    void Commit(ReadOnlySpan<int> tokens, ReadOnlySpan<float> hidden);
}

/// <summary>
/// An array session that takes one draft step together with another session of the same draft, reading the draft's
/// weights once for both: where a draft step streams its matrices from cache or memory, two sequences drafting in
/// lockstep (DraftTree.BuildChains) pay about one step's reads for two. Each session's node, state and log-probs are
/// bit-identical to what its own <see cref="IArrayDraftSession.ExpandToBuffer"/> gives, so a sequence drafts the same
/// whichever sequences share its rounds.
/// </summary>
internal interface IPairedDraftSession : IArrayDraftSession
{
    /// <summary>Whether <paramref name="other"/> (another session) can expand together with this one: the same draft and settings.</summary>
    bool CanPairWith(IPairedDraftSession other);
    /// <summary>
    /// Expands one node in this session and one in <paramref name="other"/> (each a single-node expansion, validated as
    /// ExpandToBuffer validates it). Returns this session's log-prob row [VocabSize]; the other's is its
    /// <see cref="LastRow"/>. Both stay valid until that session's next expansion.
    /// </summary>
    ReadOnlySpan<float> ExpandPair(int token, int position, int parent, IPairedDraftSession other, int otherToken, int otherPosition, int otherParent);
    /// <summary>The log-prob row of the last single-node expansion (valid until the next).</summary>
    ReadOnlySpan<float> LastRow { get; }
}

/// <summary>
/// A draft that says what it is for the tree-budget cache (TreeBudgetCalibrator.DraftIdentity), where hashing its
/// parameters does not apply: a draft with no parameters (n-gram lookup, identified by its settings) or one whose
/// parameters are not a TorchSharp module (a whole language model, identified by its weights' fingerprint).
/// </summary>
public interface IDraftIdentity
{
    /// <summary>Changes whenever what a budget costs or gains with this draft may change.</summary>
    string Identity { get; }
}
