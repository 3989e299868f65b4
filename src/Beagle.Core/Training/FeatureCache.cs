using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Beagle.Models;
using Beagle.Tokenization;
using static TorchSharp.torch;

namespace Beagle.Training;

/// <summary>What a feature cache was built from; any change gives a different cache folder.</summary>
public sealed record FeatureCacheKey(string TargetFingerprint, string TokenizerHash, string DataHash, int SeqLen, string Settings)
{
    /// <summary>First 16 hex digits of the SHA-256 of all fields: the cache folder's name.</summary>
    public string Id => Hashing.Hex(Encoding.UTF8.GetBytes($"{TargetFingerprint}|{TokenizerHash}|{DataHash}|{SeqLen}|{Settings}"))[..16];
}

/// <summary>
/// The target's top hidden states over the training sequences, on disk in half precision: a folder per
/// <see cref="FeatureCacheKey"/> (architecture.md "Files on disk") holding <c>manifest.json</c> and shards
/// <c>shard-00000.bin</c> (magic "BGLF", version, n, T, D, then n*T int32 tokens and n*T*D fp16 states).
/// Shards are written to a temporary name and renamed, and the manifest is written last, so a crashed build is never
/// mistaken for a complete one. Batches are streamed one shard at a time. Target distributions are not stored: they
/// are recomputed from the states through the frozen LM head (<see cref="Losses.TargetProbs"/>).
/// </summary>
public sealed class FeatureCache
{
    const uint Magic = 0x464C4742; // "BGLF"
    const int Version = 1;

    readonly long[] _shardStart;   // first sequence index of each shard, plus the total at the end
    public string Directory { get; }
    public FeatureCacheKey Key { get; }
    public int Count { get; }
    public int SeqLen { get; }
    public int Dim { get; }
    public IReadOnlyList<string> Shards { get; }
    /// <summary>True when an existing complete cache was found and reused (no target forward ran).</summary>
    public bool Reused { get; }

    FeatureCache(string dir, FeatureCacheKey key, int count, int seqLen, int dim, IReadOnlyList<(string File, int Count)> shards, bool reused)
    {
        Directory = dir; Key = key; Count = count; SeqLen = seqLen; Dim = dim; Reused = reused;
        Shards = shards.Select(s => s.File).ToArray();
        _shardStart = new long[shards.Count + 1];
        for (int i = 0; i < shards.Count; i++) _shardStart[i + 1] = _shardStart[i] + shards[i].Count;
    }

    public int ShardCount => Shards.Count;
    public int ShardSize(int shard) => (int)(_shardStart[shard + 1] - _shardStart[shard]);

    /// <summary>
    /// Opens the cache for these sequences under <paramref name="root"/>, building it (target forwards in batches of
    /// <paramref name="batchSize"/>) when no complete cache with the same key exists.
    /// </summary>
    public static FeatureCache Open(string root, LlamaModel target, ITokenizer tokenizer, IReadOnlyList<int[]> sequences,
        int batchSize = 16, int shardSize = 256, string settings = "", CancellationToken cancellationToken = default)
    {
        if (sequences.Count == 0) throw new ArgumentException("no training sequences (is the data shorter than one sequence length?)", nameof(sequences));
        int T = sequences[0].Length;
        if (sequences.Any(s => s.Length != T)) throw new ArgumentException("all sequences must have the same length", nameof(sequences));
        if (T > target.Config.MaxSeqLen) throw new ArgumentException($"sequence length {T} exceeds the target's context {target.Config.MaxSeqLen}");
        var key = new FeatureCacheKey(Fingerprint(target), TokenizerHash(tokenizer), DataHash(sequences), T, settings);
        var dir = Path.Combine(root, key.Id);
        var manifestPath = Path.Combine(dir, "manifest.json");
        if (File.Exists(manifestPath))
        {
            var cached = TryLoad(dir, key);
            if (cached is not null) return cached;
        }
        if (System.IO.Directory.Exists(dir)) System.IO.Directory.Delete(dir, true);
        System.IO.Directory.CreateDirectory(dir);

        int D = target.Config.Dim;
        var shards = new List<(string, int)>();
        for (int s0 = 0, shard = 0; s0 < sequences.Count; s0 += shardSize, shard++)
        {
            int n = Math.Min(shardSize, sequences.Count - s0);
            var name = $"shard-{shard:D5}.bin";
            var tmp = Path.Combine(dir, name + ".tmp");
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
            using (var bw = new BinaryWriter(fs))
            {
                bw.Write(Magic); bw.Write(Version); bw.Write(n); bw.Write(T); bw.Write(D);
                for (int i = 0; i < n; i++) bw.Write(MemoryMarshal.AsBytes(sequences[s0 + i].AsSpan()));
                for (int b0 = 0; b0 < n; b0 += batchSize)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    int b = Math.Min(batchSize, n - b0);
                    using var scope = NewDisposeScope();
                    var ids = new long[b * T];
                    for (int i = 0; i < b; i++) for (int t = 0; t < T; t++) ids[i * T + t] = sequences[s0 + b0 + i][t];
                    var h = target.HiddenStates(tensor(ids, [b, T])).to(float16).contiguous();   // [b, T, D]
                    bw.Write(h.bytes);
                }
            }
            File.Move(tmp, Path.Combine(dir, name), true);
            shards.Add((name, n));
        }
        var manifest = new JsonObject
        {
            ["format"] = "beagle-feature-cache",
            ["version"] = Version,
            ["key"] = JsonSerializer.SerializeToNode(key),
            ["count"] = sequences.Count,
            ["seq_len"] = T,
            ["dim"] = D,
            ["dtype"] = "float16",
            ["target"] = new JsonObject { ["vocab"] = target.Config.VocabSize, ["dim"] = D, ["layers"] = target.Config.Layers },
            ["created"] = DateTime.UtcNow.ToString("o"),
            ["shards"] = new JsonArray(shards.Select(s => (JsonNode)new JsonObject { ["file"] = s.Item1, ["count"] = s.Item2 }).ToArray()),
        };
        AtomicFile.WriteAllText(manifestPath, manifest.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return new FeatureCache(dir, key, sequences.Count, T, D, shards, reused: false);
    }

    static FeatureCache? TryLoad(string dir, FeatureCacheKey key)
    {
        try
        {
            var m = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "manifest.json")))!.AsObject();
            var stored = m["key"].Deserialize<FeatureCacheKey>();
            if (stored != key || (int)m["version"]! != Version) return null;
            var shards = m["shards"]!.AsArray().Select(s => ((string)s!["file"]!, (int)s["count"]!)).ToList();
            if (shards.Any(s => !File.Exists(Path.Combine(dir, s.Item1)))) return null;
            return new FeatureCache(dir, key, (int)m["count"]!, (int)m["seq_len"]!, (int)m["dim"]!, shards, reused: true);
        }
        catch (Exception e) when (e is JsonException or IOException or InvalidOperationException or NullReferenceException or FormatException)
        {
            return null;
        }
    }

    /// <summary>Reads one shard: tokens [n, T] int64 and states [n, T, D] float32 (converted from fp16).</summary>
    public (Tensor Tokens, Tensor States) ReadShard(int shard)
    {
        using var fs = File.OpenRead(Path.Combine(Directory, Shards[shard]));
        using var br = new BinaryReader(fs);
        if (br.ReadUInt32() != Magic || br.ReadInt32() != Version) throw new InvalidDataException($"{Shards[shard]}: not a feature shard of version {Version}");
        int n = br.ReadInt32(), T = br.ReadInt32(), D = br.ReadInt32();
        if (T != SeqLen || D != Dim || n != ShardSize(shard)) throw new InvalidDataException($"{Shards[shard]}: shape [{n}, {T}, {D}] does not match the manifest");
        var tok = new int[n * T];
        fs.ReadExactly(MemoryMarshal.AsBytes(tok.AsSpan()));
        var half = new Half[(long)n * T * D];
        fs.ReadExactly(MemoryMarshal.AsBytes(half.AsSpan()));
        using var scope = NewDisposeScope();
        var tokens = tensor(tok, [n, T]).to(int64);
        var states = tensor(half, [n, T, D]).to(float32);
        return (tokens.MoveToOuterDisposeScope(), states.MoveToOuterDisposeScope());
    }

    /// <summary>Number of full batches per epoch (an incomplete last batch is dropped).</summary>
    public int BatchesPerEpoch(int batchSize) => Count / batchSize;

    /// <summary>
    /// The order of sequences in <paramref name="epoch"/>: shards in a shuffled order, sequences shuffled within each
    /// shard, so that streaming needs one shard in memory at a time. A pure function of (seed, epoch), which is what
    /// makes resuming exact.
    /// </summary>
    public (int Shard, int Row)[] EpochOrder(int seed, int epoch)
    {
        var rng = new Random(Seeds.Mix(seed, epoch, 0x5eed));   // not HashCode.Combine: that is randomised per process
        var shardOrder = Enumerable.Range(0, ShardCount).ToArray();
        rng.Shuffle(shardOrder);
        var order = new List<(int, int)>(Count);
        foreach (var s in shardOrder)
        {
            var rows = Enumerable.Range(0, ShardSize(s)).ToArray();
            rng.Shuffle(rows);
            order.AddRange(rows.Select(r => (s, r)));
        }
        return order.ToArray();
    }

    /// <summary>
    /// Streams the batches of one epoch from batch <paramref name="startBatch"/> on: tokens [B, T] int64 and states
    /// [B, T, D] float32, owned by the caller. At most two shards are held in memory.
    /// </summary>
    public IEnumerable<(int Index, Tensor Tokens, Tensor States)> Batches(int batchSize, int seed, int epoch, int startBatch = 0)
    {
        var order = EpochOrder(seed, epoch);
        int nb = BatchesPerEpoch(batchSize);
        int loaded = -1; Tensor? tok = null, st = null;
        try
        {
            for (int b = startBatch; b < nb; b++)
            {
                Tensor tb, sb;
                using (var scope = NewDisposeScope())
                {
                    var toks = new List<Tensor>(batchSize); var sts = new List<Tensor>(batchSize);
                    for (int i = 0; i < batchSize; i++)
                    {
                        var (s, r) = order[b * batchSize + i];
                        if (s != loaded)
                        {
                            tok?.Dispose(); st?.Dispose();
                            (tok, st) = ReadShard(s);
                            tok.DetachFromDisposeScope(); st.DetachFromDisposeScope();
                            loaded = s;
                        }
                        toks.Add(tok![r].unsqueeze(0)); sts.Add(st![r].unsqueeze(0));
                    }
                    tb = cat(toks, 0).DetachFromDisposeScope();
                    sb = cat(sts, 0).DetachFromDisposeScope();
                }
                // Yield outside the scope: the caller's tensors must not land in (and die with) this scope.
                yield return (b, tb, sb);
            }
        }
        finally { tok?.Dispose(); st?.Dispose(); }
    }

    /// <summary>
    /// Target fingerprint: vocabulary, dim, layers, SHA-256 of the embedding bytes and of the LM head's output on a
    /// fixed probe sequence. [ours] The probe extends the brief's "sha256 of embedding bytes": it also changes when any
    /// inner layer changes, which the embedding alone would miss.
    /// </summary>
    public static string Fingerprint(LlamaModel target)
    {
        var c = target.Config;
        using var scope = NewDisposeScope();
        var emb = target.Embedding.contiguous();
        var embHash = Hashing.Hex(emb.bytes);
        int T = Math.Min(16, c.MaxSeqLen);
        var probe = new long[T]; for (int i = 0; i < T; i++) probe[i] = (c.BosId + 7L * i) % c.VocabSize;
        var h = target.HiddenStates(tensor(probe, [1, T])).to(float16).contiguous();   // fp16 rounding hides thread-count noise
        return $"v{c.VocabSize}-d{c.Dim}-l{c.Layers}-emb{embHash[..16]}-probe{Hashing.Hex(h.bytes)[..16]}";
    }

    /// <summary>SHA-256 over every token's bytes, the vocabulary size and BOS: changes when the tokenizer does.</summary>
    public static string TokenizerHash(ITokenizer tokenizer)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(BitConverter.GetBytes(tokenizer.VocabSize)); sha.AppendData(BitConverter.GetBytes(tokenizer.BosId));
        for (int i = 0; i < tokenizer.VocabSize; i++)
        {
            sha.AppendData(BitConverter.GetBytes(i));
            sha.AppendData(tokenizer.TokenBytes(i, -1));
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset())[..16];
    }

    /// <summary>SHA-256 of the packed token ids (covers the text, the tokenizer's output and the packing).</summary>
    public static string DataHash(IReadOnlyList<int[]> sequences)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var s in sequences) sha.AppendData(MemoryMarshal.AsBytes(s.AsSpan()));
        return Convert.ToHexStringLower(sha.GetHashAndReset())[..16];
    }
}

/// <summary>Deterministic seed mixing (stable across processes, unlike HashCode).</summary>
public static class Seeds
{
    public static int Mix(long a, long b, long c = 0)
    {
        ulong x = (ulong)a * 0x9E3779B97F4A7C15UL ^ (ulong)b * 0xBF58476D1CE4E5B9UL ^ (ulong)c * 0x94D049BB133111EBUL;
        x ^= x >> 31; x *= 0xD6E8FEB86659FD93UL; x ^= x >> 32;
        return (int)(x & 0x7FFFFFFF);
    }
}

static class Hashing
{
    public static string Hex(ReadOnlySpan<byte> data) => Convert.ToHexStringLower(SHA256.HashData(data));
}

/// <summary>Write-then-rename helpers, so that readers never see half a file or half a folder.</summary>
public static class AtomicFile
{
    public static void WriteAllText(string path, string text)
    {
        var tmp = path + ".tmp-" + Environment.ProcessId;
        File.WriteAllText(tmp, text);
        File.Move(tmp, path, true);
    }

    /// <summary>Writes <paramref name="path"/> through <paramref name="write"/> into a temporary sibling, then renames it into place.</summary>
    public static void Write(string path, Action<Stream> write)
    {
        var tmp = path + ".tmp-" + Environment.ProcessId;
        try
        {
            using (var f = File.Create(tmp)) write(f);
            File.Move(tmp, path, true);
        }
        finally { if (File.Exists(tmp)) File.Delete(tmp); }
    }

    /// <summary>
    /// Fills a fresh temporary sibling folder with <paramref name="write"/>, then swaps it in for
    /// <paramref name="dir"/>: the old folder is renamed aside first (<c>.name.old-*</c>) and deleted only after the
    /// rename succeeded. A crash between the two renames leaves no <paramref name="dir"/> but a complete old copy aside;
    /// <see cref="RecoverDirectory"/> puts it back.
    /// </summary>
    public static void ReplaceDirectory(string dir, Action<string> write)
    {
        var parent = Path.GetDirectoryName(Path.GetFullPath(dir))!;
        System.IO.Directory.CreateDirectory(parent);
        var tmp = Path.Combine(parent, "." + Path.GetFileName(dir) + ".tmp-" + Guid.NewGuid().ToString("N")[..8]);
        System.IO.Directory.CreateDirectory(tmp);
        try { write(tmp); }
        catch { System.IO.Directory.Delete(tmp, true); throw; }
        string? old = null;
        if (System.IO.Directory.Exists(dir))
        {
            old = Path.Combine(parent, "." + Path.GetFileName(dir) + ".old-" + Guid.NewGuid().ToString("N")[..8]);
            System.IO.Directory.Move(dir, old);
        }
        System.IO.Directory.Move(tmp, dir);
        if (old is not null) System.IO.Directory.Delete(old, true);
    }

    /// <summary>
    /// Repairs what an interrupted <see cref="ReplaceDirectory"/> left: when <paramref name="dir"/> is missing, the newest
    /// copy set aside (<c>.name.old-*</c>, complete by construction) is renamed back and returned; when it exists, copies
    /// left aside are deleted. Half-written temporary folders (<c>.name.tmp-*</c>) are deleted either way: nothing says
    /// they are complete. Only for folders that a single writer replaces (a run's checkpoint).
    /// </summary>
    public static string? RecoverDirectory(string dir)
    {
        var full = Path.GetFullPath(dir);
        var parent = Path.GetDirectoryName(full)!;
        if (!System.IO.Directory.Exists(parent)) return null;
        string name = Path.GetFileName(full);
        var aside = new DirectoryInfo(parent).EnumerateDirectories("." + name + ".old-*").OrderByDescending(d => d.LastWriteTimeUtc).ToList();
        string? recovered = null;
        if (!System.IO.Directory.Exists(full) && aside.Count > 0)
        {
            recovered = aside[0].FullName;
            System.IO.Directory.Move(recovered, full);
            aside.RemoveAt(0);
        }
        foreach (var d in aside.Concat(new DirectoryInfo(parent).EnumerateDirectories("." + name + ".tmp-*")))
            try { d.Delete(true); } catch (IOException) { /* a leftover that cannot go now goes next time */ }
        return recovered;
    }
}
