using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Beagle.Tokenization;

/// <summary>
/// Hugging Face tokenizers over Microsoft.ML.Tokenizers:
/// <list type="bullet">
/// <item>tokenizer.json, model BPE, byte-level (GPT-2, Llama 3, Qwen2): a regex pre-tokenizer, then BPE over the
/// GPT-2 bytes-to-unicode alphabet; a token's bytes are its characters mapped back through that table.</item>
/// <item>tokenizer.json, model BPE with byte_fallback (Llama 2, Mistral; SentencePiece converted): spaces become "▁",
/// a "▁" is prepended, characters missing from the vocabulary become &lt;0xXX&gt; byte tokens.</item>
/// <item>tokenizer.model (SentencePiece protobuf, BPE or Unigram) via <see cref="SentencePieceTokenizer"/>.</item>
/// </list>
/// Added tokens (added_tokens) are matched in the raw text first, as HF does. <see cref="TokenBytes"/> gives each
/// token's exact bytes so <see cref="StreamingDecoder"/> can stream multi-byte characters split across tokens.
/// </summary>
public sealed class HuggingFaceTokenizer : ITokenizer
{
    enum Kind { ByteLevel, SentencePieceBpe, SentencePieceModel }

    readonly Kind _kind;
    readonly Tokenizer _inner;
    readonly byte[][] _bytes;                         // id → bytes it contributes ("▁" already a space for SentencePiece)
    readonly bool[] _special;                         // id → decodes to nothing
    readonly (string Content, int Id)[] _added;       // longest first, so "<|im_start|>" wins over "<|im"
    readonly IReadOnlyDictionary<string, int> _vocab; // token string → id (SentencePiece-style: to find byte fallbacks)
    readonly Func<string, string> _normalize;
    readonly PrefixRule _prefix;
    readonly bool _splitOnMetaspace;

    /// <summary>When the SentencePiece-style "▁" is prepended to a stretch of text between added tokens.</summary>
    enum PrefixRule { Never, First, Always }

    public int VocabSize => _bytes.Length;
    public int BosId { get; }
    /// <summary>"tokenizer.json (byte-level BPE)", "tokenizer.json (SentencePiece BPE)" or "tokenizer.model".</summary>
    public string Description { get; }

    HuggingFaceTokenizer(Kind kind, Tokenizer inner, byte[][] bytes, bool[] special, (string, int)[] added,
        IReadOnlyDictionary<string, int> vocab, Func<string, string> normalize, PrefixRule prefix, bool split, int bosId, string description)
    {
        (_kind, _inner, _bytes, _special, _added, _vocab, _normalize, _prefix, _splitOnMetaspace) = (kind, inner, bytes, special, added, vocab, normalize, prefix, split);
        BosId = bosId; Description = description;
    }

    public bool IsSpecial(int token) => (uint)token < (uint)_special.Length && _special[token];

    public ReadOnlySpan<byte> TokenBytes(int token, int previous)
    {
        if ((uint)token >= (uint)_bytes.Length) throw new ArgumentOutOfRangeException(nameof(token), $"token id {token} is outside the vocabulary (size {_bytes.Length})");
        ReadOnlySpan<byte> b = _bytes[token];
        // SentencePiece's dummy prefix: the space of the first word is not part of the text (HF decoder Strip / Metaspace).
        if (_prefix != PrefixRule.Never && (previous < 0 || previous == BosId) && b.Length > 0 && b[0] == (byte)' ') b = b[1..];
        return b;
    }

    public int[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 2 + 2);
        if (addBos && BosId >= 0) ids.Add(BosId);
        int start = 0;
        while (start < text.Length)
        {
            // Next added token at or after start (earliest, then longest).
            int at = -1, id = -1, len = 0;
            foreach (var (content, aid) in _added)
            {
                int i = text.IndexOf(content, start, StringComparison.Ordinal);
                if (i >= 0 && (at < 0 || i < at)) { at = i; id = aid; len = content.Length; }
            }
            int end = at < 0 ? text.Length : at;
            if (end > start) EncodeSegment(text.Substring(start, end - start), atTextStart: start == 0, ids);
            if (at < 0) break;
            ids.Add(id);
            start = at + len;
        }
        return ids.ToArray();
    }

    void EncodeSegment(string segment, bool atTextStart, List<int> ids)
    {
        switch (_kind)
        {
            case Kind.ByteLevel:
                ids.AddRange(_inner.EncodeToIds(_normalize(segment)));
                return;
            case Kind.SentencePieceModel:
                ids.AddRange(((SentencePieceTokenizer)_inner).EncodeToIds(segment, addBeginningOfSentence: false, addEndOfSentence: false));
                return;
        }
        var s = _normalize(segment).Replace(' ', '▁');
        if (_prefix == PrefixRule.Always || (_prefix == PrefixRule.First && atTextStart)) s = "▁" + s;
        // Metaspace(split=true) cuts before every "▁"; the Llama-2 normalizer form keeps the whole stretch as one word.
        var words = _splitOnMetaspace ? SplitBeforeMetaspace(s) : [s];
        Span<byte> utf8 = stackalloc byte[4];
        foreach (var word in words)
        {
            // Characters missing from the vocabulary never take part in a merge (byte_fallback), so the stretches
            // between them are independent BPE words; the missing characters become their UTF-8 byte tokens.
            var run = new StringBuilder();
            foreach (var rune in word.EnumerateRunes())
            {
                var r = rune.ToString();
                if (_vocab.ContainsKey(r)) { run.Append(r); continue; }
                Flush(run, ids);
                int n = rune.EncodeToUtf8(utf8);
                for (int k = 0; k < n; k++)
                {
                    var piece = $"<0x{utf8[k]:X2}>";
                    ids.Add(_vocab.TryGetValue(piece, out int bid) ? bid
                        : throw new InvalidOperationException($"character U+{rune.Value:X4} is not in the vocabulary and there is no byte-fallback token {piece}"));
                }
            }
            Flush(run, ids);
        }
    }

    void Flush(StringBuilder run, List<int> ids)
    {
        if (run.Length == 0) return;
        ids.AddRange(_inner.EncodeToIds(run.ToString(), considerPreTokenization: false, considerNormalization: false));
        run.Clear();
    }

    static List<string> SplitBeforeMetaspace(string s)
    {
        var words = new List<string>();
        int begin = 0;
        for (int i = 1; i < s.Length; i++)
            if (s[i] == '▁') { words.Add(s[begin..i]); begin = i; }
        if (s.Length > 0) words.Add(s[begin..]);
        return words;
    }

    // ---------------------------------------------------------------- tokenizer.json

    /// <summary>
    /// Reads a tokenizer.json (model type BPE). <paramref name="tokenizerConfigPath"/> (tokenizer_config.json, optional)
    /// supplies bos_token and add_bos_token; without it the post-processor's template decides.
    /// </summary>
    public static HuggingFaceTokenizer FromTokenizerJson(string path, string? tokenizerConfigPath = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer not found: {path}", path);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e); }
        using (doc)
        {
            var root = doc.RootElement;
            if (!root.TryGetProperty("model", out var model)) throw new InvalidDataException($"{path}: no 'model' section; not a Hugging Face tokenizer.json");
            var type = Str(model, "type");
            if (type != "BPE") throw new InvalidDataException($"{path}: model type '{type ?? "(none)"}' is not supported (supported: BPE)");

            var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var p in model.GetProperty("vocab").EnumerateObject()) vocab[p.Name] = p.Value.GetInt32();
            var merges = model.TryGetProperty("merges", out var m) && m.ValueKind == JsonValueKind.Array
                ? m.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : $"{e[0].GetString()} {e[1].GetString()}").ToList()
                : [];
            var added = new List<(string Content, int Id, bool Special)>();
            if (root.TryGetProperty("added_tokens", out var at) && at.ValueKind == JsonValueKind.Array)
                foreach (var t in at.EnumerateArray())
                    added.Add((t.GetProperty("content").GetString()!, t.GetProperty("id").GetInt32(), t.TryGetProperty("special", out var sp) && sp.GetBoolean()));

            bool byteFallback = model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
            var pre = root.TryGetProperty("pre_tokenizer", out var p0) && p0.ValueKind == JsonValueKind.Object ? p0 : (JsonElement?)null;
            var norm = root.TryGetProperty("normalizer", out var n0) && n0.ValueKind == JsonValueKind.Object ? n0 : (JsonElement?)null;
            var preSteps = Flatten(pre);
            var normSteps = Flatten(norm);
            bool byteLevel = preSteps.Any(s => Str(s, "type") == "ByteLevel");

            int size = Math.Max(vocab.Values.DefaultIfEmpty(-1).Max(), added.Select(a => a.Id).DefaultIfEmpty(-1).Max()) + 1;
            var bytes = new byte[size][];
            var special = new bool[size];
            for (int i = 0; i < size; i++) bytes[i] = [];
            var (bosToken, addBos) = BosFromConfig(path, tokenizerConfigPath, root);

            HuggingFaceTokenizer result;
            if (byteLevel)
            {
                var pattern = Gpt2Pattern;
                foreach (var s in preSteps)
                {
                    switch (Str(s, "type"))
                    {
                        case "ByteLevel":
                            if (s.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True)
                                throw new InvalidDataException($"{path}: ByteLevel add_prefix_space=true is not supported");
                            break;
                        case "Split":
                            var pat = s.GetProperty("pattern");
                            pattern = pat.TryGetProperty("Regex", out var rx) ? rx.GetString()! : Regex.Escape(pat.GetProperty("String").GetString()!);
                            break;
                        case "Digits" or "Punctuation":
                            throw new InvalidDataException($"{path}: pre-tokenizer '{Str(s, "type")}' is not supported with byte-level BPE");
                    }
                }
                Regex regex;
                try { regex = new Regex(pattern, RegexOptions.Compiled); }
                catch (ArgumentException e) { throw new InvalidDataException($"{path}: the pre-tokenizer regex is not supported by .NET: {e.Message}", e); }
                var normalize = UnicodeNormalizer(path, normSteps);
                var bpe = BpeTokenizer.Create(new BpeOptions(vocab) { Merges = merges, ByteLevel = true, PreTokenizer = new RegexPreTokenizer(regex, null) });
                var unicodeToByte = UnicodeToByte();
                foreach (var (tok, id) in vocab)
                {
                    var b = new byte[tok.Length]; int k = 0; bool ok = true;
                    foreach (var ch in tok) { if (unicodeToByte.TryGetValue(ch, out var by)) b[k++] = by; else { ok = false; break; } }
                    bytes[id] = ok ? b : Encoding.UTF8.GetBytes(tok);
                }
                SetAdded(bytes, special, added);
                result = new HuggingFaceTokenizer(Kind.ByteLevel, bpe, bytes, special, AddedLongestFirst(added), vocab, normalize, PrefixRule.Never, false,
                    Bos(path, bosToken, addBos, vocab, added), "tokenizer.json (byte-level BPE)");
            }
            else
            {
                if (!byteFallback) throw new InvalidDataException($"{path}: BPE without a ByteLevel pre-tokenizer must have byte_fallback=true (SentencePiece style); other BPE variants are not supported");
                var prefix = PrefixRule.Never; bool split = false;
                var replaceSpaces = false;
                foreach (var s in normSteps)
                    switch (Str(s, "type"))
                    {
                        case "Prepend" when Str(s, "prepend") == "▁": prefix = PrefixRule.Always; break;
                        case "Replace" when ReplacePattern(s) == " " && Str(s, "content") == "▁": replaceSpaces = true; break;
                        default: throw new InvalidDataException($"{path}: normalizer '{Str(s, "type")}' is not supported for SentencePiece-style BPE");
                    }
                foreach (var s in preSteps)
                    switch (Str(s, "type"))
                    {
                        case "Metaspace":
                            replaceSpaces = true;
                            var scheme = Str(s, "prepend_scheme") ?? (s.TryGetProperty("add_prefix_space", out var ap) && ap.ValueKind == JsonValueKind.False ? "never" : "always");
                            prefix = scheme switch { "always" => PrefixRule.Always, "first" => PrefixRule.First, "never" => PrefixRule.Never,
                                _ => throw new InvalidDataException($"{path}: Metaspace prepend_scheme '{scheme}' is not supported") };
                            split = !s.TryGetProperty("split", out var sv) || sv.ValueKind != JsonValueKind.False;
                            break;
                        default: throw new InvalidDataException($"{path}: pre-tokenizer '{Str(s, "type")}' is not supported for SentencePiece-style BPE");
                    }
                if (!replaceSpaces) throw new InvalidDataException($"{path}: SentencePiece-style BPE without a ' ' → '▁' normalizer or Metaspace pre-tokenizer is not supported");
                // Whole-stretch words: the splitting is done in EncodeSegment, BPE only merges.
                var bpe = BpeTokenizer.Create(new BpeOptions(vocab) { Merges = merges, PreTokenizer = new RegexPreTokenizer(new Regex(@"[\s\S]+"), null) });
                foreach (var (tok, id) in vocab) bytes[id] = SentencePieceBytes(tok);
                SetAdded(bytes, special, added);
                result = new HuggingFaceTokenizer(Kind.SentencePieceBpe, bpe, bytes, special, AddedLongestFirst(added), vocab, s => s, prefix, split,
                    Bos(path, bosToken, addBos, vocab, added), "tokenizer.json (SentencePiece BPE)");
            }
            return result;
        }
    }

    // ---------------------------------------------------------------- tokenizer.model

    /// <summary>Reads a SentencePiece tokenizer.model (BPE or Unigram). BOS is added unless tokenizer_config.json says add_bos_token=false.</summary>
    public static HuggingFaceTokenizer FromSentencePieceModel(string path, string? tokenizerConfigPath = null)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer not found: {path}", path);
        SentencePieceTokenizer sp;
        try { using var fs = File.OpenRead(path); sp = SentencePieceTokenizer.Create(fs, false, false); }
        catch (Exception e) when (e is not IOException) { throw new InvalidDataException($"{path}: not a readable SentencePiece model ({e.Message})", e); }
        var vocab = sp.Vocabulary;
        int size = vocab.Values.Max() + 1;
        var bytes = new byte[size][];
        for (int i = 0; i < size; i++) bytes[i] = [];
        foreach (var (tok, id) in vocab) bytes[id] = SentencePieceBytes(tok);
        var special = new bool[size];
        foreach (var id in new[] { sp.BeginningOfSentenceId, sp.EndOfSentenceId, sp.UnknownId })
            if ((uint)id < (uint)size) { special[id] = true; bytes[id] = []; }
        bool addBos = true;   // SentencePiece Llama/Mistral models take BOS
        if (tokenizerConfigPath is not null && File.Exists(tokenizerConfigPath))
        {
            using var cfg = JsonDocument.Parse(File.ReadAllBytes(tokenizerConfigPath));
            if (cfg.RootElement.TryGetProperty("add_bos_token", out var ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False) addBos = ab.GetBoolean();
        }
        return new HuggingFaceTokenizer(Kind.SentencePieceModel, sp, bytes, special, [], vocab, s => s,
            sp.AddDummyPrefix ? PrefixRule.Always : PrefixRule.Never, false, addBos ? sp.BeginningOfSentenceId : -1, "tokenizer.model");
    }

    // ---------------------------------------------------------------- helpers

    /// <summary>GPT-2's pre-tokenizer regex (ByteLevel with use_regex=true).</summary>
    const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>GPT-2's bytes_to_unicode, inverted: printable bytes map to themselves, the rest to U+0100 onwards.</summary>
    static Dictionary<char, byte> UnicodeToByte()
    {
        var map = new Dictionary<char, byte>(256);
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[printable ? (char)b : (char)(256 + n++)] = (byte)b;
        }
        return map;
    }

    /// <summary>SentencePiece piece → bytes: "&lt;0xAB&gt;" is the byte 0xAB, "▁" is a space, anything else its UTF-8.</summary>
    static byte[] SentencePieceBytes(string piece)
    {
        if (piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>' &&
            byte.TryParse(piece.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var b))
            return [b];
        return Encoding.UTF8.GetBytes(piece.Replace('▁', ' '));
    }

    static void SetAdded(byte[][] bytes, bool[] special, List<(string Content, int Id, bool Special)> added)
    {
        foreach (var (content, id, isSpecial) in added)
        {
            special[id] = isSpecial;
            bytes[id] = isSpecial ? [] : Encoding.UTF8.GetBytes(content);
        }
    }

    static (string, int)[] AddedLongestFirst(List<(string Content, int Id, bool Special)> added) =>
        added.OrderByDescending(a => a.Content.Length).Select(a => (a.Content, a.Id)).ToArray();

    static List<JsonElement> Flatten(JsonElement? e)
    {
        var list = new List<JsonElement>();
        if (e is not { } x) return list;
        var key = Str(x, "type") == "Sequence" ? (x.TryGetProperty("pretokenizers", out _) ? "pretokenizers" : "normalizers") : null;
        if (key is null) list.Add(x);
        else foreach (var c in x.GetProperty(key).EnumerateArray()) list.AddRange(Flatten(c));
        return list;
    }

    static Func<string, string> UnicodeNormalizer(string path, List<JsonElement> steps)
    {
        Func<string, string> f = s => s;
        foreach (var s in steps)
        {
            var prev = f;
            f = Str(s, "type") switch
            {
                "NFC" => t => prev(t).Normalize(NormalizationForm.FormC),
                "NFKC" => t => prev(t).Normalize(NormalizationForm.FormKC),
                "NFD" => t => prev(t).Normalize(NormalizationForm.FormD),
                "NFKD" => t => prev(t).Normalize(NormalizationForm.FormKD),
                var other => throw new InvalidDataException($"{path}: normalizer '{other}' is not supported with byte-level BPE"),
            };
        }
        return f;
    }

    static string? ReplacePattern(JsonElement s) =>
        s.TryGetProperty("pattern", out var p) && p.TryGetProperty("String", out var str) ? str.GetString() : null;

    static string? Str(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    /// <summary>
    /// BOS token and whether it is added: tokenizer_config.json's bos_token / add_bos_token when present, else the
    /// post-processor template (Llama 2/3 put their BOS there; Qwen2 has none).
    /// </summary>
    static (string? Token, bool Add) BosFromConfig(string path, string? configPath, JsonElement root)
    {
        string? token = null; bool? add = null;
        if (configPath is not null && File.Exists(configPath))
        {
            try
            {
                using var cfg = JsonDocument.Parse(File.ReadAllBytes(configPath));
                var r = cfg.RootElement;
                if (r.TryGetProperty("bos_token", out var b))
                    token = b.ValueKind == JsonValueKind.String ? b.GetString() : b.ValueKind == JsonValueKind.Object ? Str(b, "content") : null;
                if (r.TryGetProperty("add_bos_token", out var ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False) add = ab.GetBoolean();
            }
            catch (JsonException e) { throw new InvalidDataException($"{configPath}: not valid JSON: {e.Message}", e); }
        }
        if (root.TryGetProperty("post_processor", out var pp) && pp.ValueKind == JsonValueKind.Object)
        {
            var steps = Str(pp, "type") == "Sequence" ? pp.GetProperty("processors").EnumerateArray().ToList() : [pp];
            foreach (var s in steps)
                if (Str(s, "type") == "TemplateProcessing" && s.TryGetProperty("single", out var single) && single.GetArrayLength() > 0
                    && single[0].TryGetProperty("SpecialToken", out var st))
                {
                    token ??= Str(st, "id");
                    add ??= Str(st, "id") == token;
                }
        }
        return (token, add ?? false);
    }

    static int Bos(string path, string? token, bool add, Dictionary<string, int> vocab, List<(string Content, int Id, bool Special)> added)
    {
        if (!add || token is null) return -1;   // the model is not fed a BOS (e.g. Qwen2), so the tokenizer has none to add
        foreach (var a in added) if (a.Content == token) return a.Id;
        return vocab.TryGetValue(token, out int id) ? id : throw new InvalidDataException($"{path}: bos_token '{token}' is not in the vocabulary");
    }
}
