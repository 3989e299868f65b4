using System.Text;
using System.Text.Json;
using Beagle.Decoding;
using Beagle.Models;
using Beagle.Tokenization;

namespace Beagle.Training;

/// <summary>
/// Training text: plain text files, jsonl with a text field, chat jsonl (Spec-Bench / MT-bench <c>{"turns": [...]}</c>
/// or ShareGPT <c>{"conversations": [{"from", "value"}]}</c>), or text the target generates itself.
/// </summary>
public static class TextSources
{
    /// <summary>Separator TinyStories uses between stories; when present it splits documents instead of blank lines.</summary>
    public const string EndOfText = "<|endoftext|>";

    /// <summary>Documents of one file: *.jsonl / *.json lines are parsed as JSON records, anything else as plain text.</summary>
    public static IEnumerable<string> ReadDocuments(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"training data file not found: {path}", path);
        var ext = Path.GetExtension(path).ToLowerInvariant();
        if (ext is ".jsonl" or ".ndjson")
        {
            int lineNo = 0;
            foreach (var line in File.ReadLines(path))
            {
                lineNo++;
                if (string.IsNullOrWhiteSpace(line)) continue;
                string? doc;
                try { doc = ParseRecord(line); }
                catch (JsonException e) { throw new InvalidDataException($"{path}:{lineNo}: not valid JSON ({e.Message})", e); }
                if (doc is null) throw new InvalidDataException($"{path}:{lineNo}: expected a \"text\" field, \"turns\" (Spec-Bench/MT-bench) or \"conversations\" (ShareGPT)");
                if (doc.Length > 0) yield return doc;
            }
            yield break;
        }
        foreach (var d in SplitPlainText(File.ReadAllText(path))) yield return d;
    }

    /// <summary>Splits plain text into documents on <see cref="EndOfText"/> if present, else on blank lines.</summary>
    public static IEnumerable<string> SplitPlainText(string text)
    {
        text = text.Replace("\r\n", "\n");
        IEnumerable<string> parts = text.Contains(EndOfText, StringComparison.Ordinal)
            ? text.Split(EndOfText)
            : System.Text.RegularExpressions.Regex.Split(text, @"\n[ \t]*\n");
        foreach (var p in parts)
        {
            var t = p.Trim();
            if (t.Length > 0) yield return t;
        }
    }

    /// <summary>One jsonl record as a document, or null when it has no recognised field.</summary>
    public static string? ParseRecord(string json)
    {
        using var doc = JsonDocument.Parse(json);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) return null;
        if (root.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String) return text.GetString()!;
        if (root.TryGetProperty("turns", out var turns) && turns.ValueKind == JsonValueKind.Array)
        {
            // Spec-Bench / MT-bench: user turns only; the assistant's part is left for the target (--generate) or
            // absent, so render the user turns as a conversation prompt.
            var msgs = turns.EnumerateArray().Where(t => t.ValueKind == JsonValueKind.String).Select(t => ("user", t.GetString()!)).ToList();
            return RenderChat(msgs);
        }
        if (root.TryGetProperty("conversations", out var conv) && conv.ValueKind == JsonValueKind.Array)
        {
            var msgs = new List<(string, string)>();
            foreach (var m in conv.EnumerateArray())
            {
                if (m.ValueKind != JsonValueKind.Object) continue;
                var from = m.TryGetProperty("from", out var f) ? f.GetString() ?? "" : m.TryGetProperty("role", out var r) ? r.GetString() ?? "" : "";
                var value = m.TryGetProperty("value", out var v) ? v.GetString() ?? "" : m.TryGetProperty("content", out var c) ? c.GetString() ?? "" : "";
                msgs.Add((from is "human" or "user" ? "user" : from is "gpt" or "assistant" or "chatgpt" or "bard" ? "assistant" : from, value));
            }
            return RenderChat(msgs);
        }
        return null;
    }

    /// <summary>A simple, model-neutral chat template: "User: ...\nAssistant: ...\n" per turn.</summary>
    public static string RenderChat(IReadOnlyList<(string Role, string Content)> messages)
    {
        var sb = new StringBuilder();
        foreach (var (role, content) in messages)
        {
            var name = role switch { "user" => "User", "assistant" => "Assistant", "system" => "System", _ => role };
            sb.Append(name).Append(": ").Append(content.Trim()).Append('\n');
        }
        return sb.ToString().TrimEnd();
    }

    /// <summary>
    /// <paramref name="count"/> sequences sampled from the target itself (BOS, then temperature sampling), token ids
    /// with BOS first. Sequence i uses seed <paramref name="seed"/> + i, so the set is reproducible.
    /// </summary>
    public static List<int[]> Generate(LlamaModel target, ITokenizer tokenizer, int count, int maxNewTokens, float temperature, int seed,
        CancellationToken cancellationToken = default)
    {
        if (count < 0) throw new ArgumentOutOfRangeException(nameof(count));
        if (tokenizer.BosId < 0) throw new InvalidOperationException("--generate needs a tokenizer with a BOS token to start from");
        var gen = new Generator(target, tokenizer);
        var result = new List<int[]>(count);
        for (int i = 0; i < count; i++)
        {
            var ids = new List<int> { tokenizer.BosId };
            var opts = new GenerationOptions
            {
                MaxNewTokens = Math.Min(maxNewTokens, target.Config.MaxSeqLen - 1),
                Sampling = new SamplingOptions { Temperature = temperature, Seed = unchecked(seed + i) },
            };
            foreach (var chunk in gen.Generate([tokenizer.BosId], opts, null, cancellationToken)) ids.AddRange(chunk.TokenIds);
            result.Add(ids.ToArray());
        }
        return result;
    }
}

/// <summary>Tokenising and packing documents into fixed-length training sequences.</summary>
public static class SequencePacker
{
    /// <summary>Encodes each document with BOS.</summary>
    public static List<int[]> Tokenize(IEnumerable<string> documents, ITokenizer tokenizer)
        => documents.Select(d => tokenizer.Encode(d, addBos: tokenizer.BosId >= 0)).ToList();

    /// <summary>
    /// Concatenates documents (each already starting with BOS) and cuts the stream into sequences of exactly
    /// <paramref name="seqLen"/> tokens; the incomplete tail is dropped (no padding, so no padding mask anywhere).
    /// </summary>
    public static List<int[]> Pack(IEnumerable<int[]> documents, int seqLen, int? maxSequences = null)
    {
        if (seqLen < 2) throw new ArgumentOutOfRangeException(nameof(seqLen), seqLen, "sequence length must be at least 2");
        var result = new List<int[]>();
        var buf = new int[seqLen]; int n = 0;
        foreach (var doc in documents)
            foreach (var id in doc)
            {
                buf[n++] = id;
                if (n == seqLen)
                {
                    result.Add(buf); buf = new int[seqLen]; n = 0;
                    if (maxSequences is { } m && result.Count >= m) return result;
                }
            }
        return result;
    }
}
