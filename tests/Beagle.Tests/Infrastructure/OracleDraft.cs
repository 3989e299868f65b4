using Beagle.Drafting;
using static TorchSharp.torch;

namespace Beagle.Tests.Infrastructure;

/// <summary>
/// A test draft that knows the target's greedy continuations of a few recorded sequences: for a context it has seen it
/// puts (almost) all probability on the recorded next token, otherwise it is uniform. A stand-in for a perfect draft,
/// independent of the project's drafts, to check decisions that depend on how good the draft is.
/// </summary>
public sealed class OracleDraft(int vocab, IEnumerable<int[]> sequences) : IDraftModel
{
    readonly Dictionary<string, int> _next = Build(sequences);
    public string Architecture => "oracle-test";
    public int DraftVocabSize => vocab;
    public IReadOnlyList<int>? DraftToTarget => null;

    static Dictionary<string, int> Build(IEnumerable<int[]> sequences)
    {
        var d = new Dictionary<string, int>();
        foreach (var s in sequences)
            for (int i = 1; i < s.Length; i++) d[string.Join(',', s[..i])] = s[i];
        return d;
    }

    public IDraftSession StartSession(int capacity) => new Session(this);
    public long WeightBytes => 0;   // a lookup table of recorded continuations, not weights; memory is not what it tests
    public void Dispose() { }

    // An array session (like the project's managed kernels): a tensor per expansion cost ~20 µs in ops, half a plain
    // step of stories260K, so a "perfect" draft would not be clearly faster for reasons that have nothing to do with it.
    sealed class Session(OracleDraft d) : IDraftSession, IArrayDraftSession
    {
        public int VocabSize => d.DraftVocabSize;
        public void Commit(ReadOnlySpan<int> tokens, ReadOnlySpan<float> hidden) => _committed.AddRange(tokens.ToArray());
        public Tensor Expand(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
            => tensor(ExpandToBuffer(tokens, positions, parents).ToArray(), [tokens.Length, d.DraftVocabSize]);

        readonly List<int> _committed = [];
        readonly List<(int Token, int Parent)> _round = [];
        public int Length => _committed.Count;
        public bool ConcatDraftStates { get; set; } = true;
        public long StateBytes => 0;
        public void Commit(ReadOnlySpan<int> tokens, Tensor hidden) => _committed.AddRange(tokens.ToArray());
        public ReadOnlySpan<float> ExpandToBuffer(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
        {
            var logp = new float[tokens.Length * d.DraftVocabSize];
            Array.Fill(logp, MathF.Log(1e-6f / d.DraftVocabSize));
            for (int i = 0; i < tokens.Length; i++)
            {
                _round.Add((tokens[i], parents[i]));
                var path = new List<int>();
                for (int n = _round.Count - 1; n >= 0; n = _round[n].Parent) path.Insert(0, _round[n].Token);
                var key = string.Join(',', _committed.Concat(path));
                if (d._next.TryGetValue(key, out var next)) logp[i * d.DraftVocabSize + next] = 0f;
                else for (int v = 0; v < d.DraftVocabSize; v++) logp[i * d.DraftVocabSize + v] = -MathF.Log(d.DraftVocabSize);
            }
            return logp;
        }
        public void EndRound() => _round.Clear();
        public void Dispose() { }
    }
}
