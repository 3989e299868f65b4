using System.Text;

namespace Beagle.Tokenization;

/// <summary>
/// The llama2.c tokenizer format (tokenizer.bin / tok512.bin): int32 max_token_length, then per token
/// (float32 score, int32 length, bytes). Encoding follows llama2.c's run.c exactly: a dummy-prefix space, UTF-8
/// code points looked up whole or split into byte-fallback tokens (id = byte + 3), then repeated merging of the
/// adjacent pair with the highest score.
/// </summary>
public sealed class Llama2cTokenizer : ITokenizer
{
    readonly byte[][] _pieces;
    readonly float[] _scores;
    readonly Dictionary<string, int> _lookup;   // piece bytes as Latin-1 string (a bijection) → first id with that piece
    readonly byte[][] _bytePieces = new byte[256][];

    public int VocabSize => _pieces.Length;
    public int BosId => 1;
    public int EosId => 2;
    public int MaxTokenLength { get; }

    Llama2cTokenizer(byte[][] pieces, float[] scores, int maxTokenLength)
    {
        _pieces = pieces; _scores = scores; MaxTokenLength = maxTokenLength;
        _lookup = new Dictionary<string, int>(pieces.Length, StringComparer.Ordinal);
        for (int i = 0; i < pieces.Length; i++) _lookup.TryAdd(Encoding.Latin1.GetString(pieces[i]), i);
        for (int b = 0; b < 256; b++) _bytePieces[b] = [(byte)b];
    }

    /// <summary>Reads a tokenizer file. <paramref name="expectedVocabSize"/> (the model's) must match the file's token count.</summary>
    public static Llama2cTokenizer Load(string path, int? expectedVocabSize = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer file not found: {path}", path);
        var data = File.ReadAllBytes(path);
        if (data.Length < 4) throw new InvalidDataException($"{path}: too short to be a llama2.c tokenizer");
        int maxLen = BitConverter.ToInt32(data, 0);
        if (maxLen <= 0 || maxLen > 1 << 16) throw new InvalidDataException($"{path}: max_token_length {maxLen} is implausible; not a llama2.c tokenizer file");
        var pieces = new List<byte[]>(); var scores = new List<float>();
        int off = 4;
        while (off < data.Length)
        {
            if (off + 8 > data.Length) throw new InvalidDataException($"{path}: truncated at token {pieces.Count} (byte {off})");
            float score = BitConverter.ToSingle(data, off);
            int len = BitConverter.ToInt32(data, off + 4);
            off += 8;
            if (len < 0 || len > maxLen || off + len > data.Length)
                throw new InvalidDataException($"{path}: token {pieces.Count} has length {len} (max {maxLen}) running past the end; the file is corrupt or truncated");
            pieces.Add(data.AsSpan(off, len).ToArray()); scores.Add(score);
            off += len;
        }
        if (expectedVocabSize is { } v && v != pieces.Count)
            throw new InvalidDataException($"{path}: the tokenizer has {pieces.Count} tokens but the model's vocabulary has {v}; they do not belong together");
        if (pieces.Count < 259) throw new InvalidDataException($"{path}: {pieces.Count} tokens is too few for llama2.c's layout (3 control tokens + 256 byte fallbacks)");
        return new Llama2cTokenizer(pieces.ToArray(), scores.ToArray(), maxLen);
    }

    public bool IsSpecial(int token) => token is 0 or 1 or 2;

    public int[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var tokens = new List<int>(text.Length + 2);
        if (addBos) tokens.Add(BosId);
        var bytes = Encoding.UTF8.GetBytes(text);
        if (bytes.Length > 0)
        {
            if (!_lookup.TryGetValue(" ", out int dummy)) throw new InvalidDataException("tokenizer has no ' ' token for the dummy prefix");
            tokens.Add(dummy);
        }
        // Code points: a lead byte plus up to 3 continuation bytes (run.c caps a code point at 4 bytes).
        for (int i = 0; i < bytes.Length;)
        {
            int len = 1;
            while (i + len < bytes.Length && (bytes[i + len] & 0xC0) == 0x80 && len < 4) len++;
            if (_lookup.TryGetValue(Encoding.Latin1.GetString(bytes, i, len), out int id)) tokens.Add(id);
            else for (int j = 0; j < len; j++) tokens.Add(bytes[i + j] + 3);
            i += len;
        }
        // Greedy merges, as in run.c: repeatedly merge the adjacent pair whose merged piece has the highest score,
        // the leftmost such pair on ties. run.c rescans all pairs after each merge (quadratic: minutes for a book);
        // a heap over a linked list gives the same merges in O(n log n). Stale heap entries are skipped.
        int start = addBos ? 1 : 0;   // "\n<s>\n"+x is never a token, so BOS never merges
        int n = tokens.Count;
        var ids = tokens.ToArray();
        var next = new int[n]; var prev = new int[n]; var alive = new bool[n]; var version = new int[n];
        for (int i = 0; i < n; i++) { next[i] = i + 1 < n ? i + 1 : -1; prev[i] = i - 1; alive[i] = i >= start; }
        if (start == 1 && n > 1) prev[1] = -1;
        var heap = new PriorityQueue<(int Left, int Right, int Merged, int VL, int VR), (float NegScore, int Left)>();
        void Consider(int l)
        {
            if (l < 0 || !alive[l]) return;
            int r = next[l];
            if (r < 0 || !alive[r]) return;
            var key = Encoding.Latin1.GetString(_pieces[ids[l]]) + Encoding.Latin1.GetString(_pieces[ids[r]]);
            if (_lookup.TryGetValue(key, out int m)) heap.Enqueue((l, r, m, version[l], version[r]), (-_scores[m], l));
        }
        for (int i = start; i < n; i++) Consider(i);
        while (heap.TryDequeue(out var e, out _))
        {
            if (!alive[e.Left] || !alive[e.Right] || next[e.Left] != e.Right || version[e.Left] != e.VL || version[e.Right] != e.VR) continue;
            ids[e.Left] = e.Merged; version[e.Left]++;
            alive[e.Right] = false;
            next[e.Left] = next[e.Right];
            if (next[e.Left] >= 0) prev[next[e.Left]] = e.Left;
            if (prev[e.Left] >= 0) Consider(prev[e.Left]);
            Consider(e.Left);
        }
        var merged = new List<int>(n);
        if (start == 1) merged.Add(ids[0]);
        for (int i = start; i >= 0 && i < n; i = next[i]) if (alive[i]) merged.Add(ids[i]);
        return merged.ToArray();
    }

    public ReadOnlySpan<byte> TokenBytes(int token, int previous)
    {
        if ((uint)token >= (uint)_pieces.Length) throw new ArgumentOutOfRangeException(nameof(token), $"token id {token} is outside the vocabulary (size {_pieces.Length})");
        ReadOnlySpan<byte> piece = _pieces[token];
        if (previous == BosId && piece.Length > 0 && piece[0] == (byte)' ') piece = piece[1..];   // run.c: strip the space after BOS
        // "<0xAB>" byte-fallback pieces decode to the raw byte.
        if (piece.Length == 6 && piece[0] == '<' && piece[1] == '0' && piece[2] == 'x' && piece[5] == '>' &&
            byte.TryParse(piece.Slice(3, 2), System.Globalization.NumberStyles.HexNumber, null, out var b))   // (UTF-8 parse: no string per token)
            return _bytePieces[b];
        return piece;
    }
}
