using System.Runtime.InteropServices;
using Beagle.Models;
using static TorchSharp.torch;

namespace Beagle.Checkpoints;

/// <summary>
/// Reads llama2.c checkpoints: the legacy format (7 int32 header fields, fp32 weights, RoPE tables; a negative
/// vocab size means an untied classifier follows) and the versioned export format version 1 (magic "ak42",
/// 256-byte header, fp32). Version 2 (int8) is refused with a message. The file size must match the header exactly,
/// so a truncated or padded file is caught before any weight is used; non-finite weights are refused too.
/// </summary>
public static class Llama2cCheckpoint
{
    const uint Magic = 0x616b3432;   // "ak42"

    public static LlamaWeights Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"checkpoint not found: {path}", path);
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 28) throw new InvalidDataException($"{path}: {bytes.Length} bytes is too short for a llama2.c checkpoint header");
        var ints = MemoryMarshal.Cast<byte, int>(bytes.AsSpan(0, 28));
        return BitConverter.ToUInt32(bytes, 0) == Magic ? LoadVersioned(path, bytes) : LoadLegacy(path, bytes, ints);
    }

    static LlamaWeights LoadLegacy(string path, byte[] bytes, ReadOnlySpan<int> h)
    {
        int dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kvHeads = h[4], vocabSigned = h[5], seqLen = h[6];
        bool shared = vocabSigned > 0;
        int vocab = Math.Abs(vocabSigned);
        CheckHeader(path, dim, hidden, layers, heads, kvHeads, vocab, seqLen);
        var cfg = MakeConfig(dim, hidden, layers, heads, kvHeads, vocab, seqLen, shared);
        int hd = dim / heads;
        long floats = WeightFloats(cfg) + (long)seqLen * hd /* rope real+imag: 2 * seq * hd/2 */ + (shared ? 0 : (long)vocab * dim);
        long expected = 28 + floats * 4;
        if (bytes.LongLength != expected)
            throw new InvalidDataException($"{path}: size {bytes.LongLength} bytes, but the header (dim {dim}, layers {layers}, vocab {vocab}) implies {expected}; the file is truncated, corrupt or not a llama2.c checkpoint");
        var r = new Reader(path, bytes, 28);
        var emb = r.Next(vocab, dim);
        var attnNorm = r.Next(layers, dim); var wq = r.Next(layers, dim, dim); var wk = r.Next(layers, cfg.KvDim, dim);
        var wv = r.Next(layers, cfg.KvDim, dim); var wo = r.Next(layers, dim, dim); var ffnNorm = r.Next(layers, dim);
        var w1 = r.Next(layers, hidden, dim); var w2 = r.Next(layers, dim, hidden); var w3 = r.Next(layers, hidden, dim);
        var finalNorm = r.Next(dim);
        r.Skip((long)seqLen * hd);   // freq_cis_real / imag: recomputed, unused (as in run.c)
        var cls = shared ? null : r.Next(vocab, dim);
        return Assemble(cfg, emb, attnNorm, wq, wk, wv, wo, ffnNorm, w1, w2, w3, finalNorm, cls);
    }

    static LlamaWeights LoadVersioned(string path, byte[] bytes)
    {
        if (bytes.Length < 256) throw new InvalidDataException($"{path}: versioned llama2.c header needs 256 bytes, file has {bytes.Length}");
        int version = BitConverter.ToInt32(bytes, 4);
        if (version == 2) throw new InvalidDataException($"{path}: llama2.c export version 2 (int8 Q8_0) is not supported; export with --version 1 (fp32)");
        if (version != 1) throw new InvalidDataException($"{path}: unknown llama2.c export version {version} (supported: legacy and version 1)");
        var h = MemoryMarshal.Cast<byte, int>(bytes.AsSpan(8, 28));
        int dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kvHeads = h[4], vocab = h[5], seqLen = h[6];
        bool shared = bytes[36] != 0;
        CheckHeader(path, dim, hidden, layers, heads, kvHeads, vocab, seqLen);
        var cfg = MakeConfig(dim, hidden, layers, heads, kvHeads, vocab, seqLen, shared);
        long expected = 256 + (WeightFloats(cfg) + (shared ? 0 : (long)vocab * dim)) * 4;
        if (bytes.LongLength != expected)
            throw new InvalidDataException($"{path}: size {bytes.LongLength} bytes, but the version-1 header implies {expected}; the file is truncated or corrupt");
        var r = new Reader(path, bytes, 256);
        // export.py version1_export order: norms first, then embedding, then the projections layer-major per kind.
        var attnNorm = r.Next(layers, dim); var ffnNorm = r.Next(layers, dim); var finalNorm = r.Next(dim);
        var emb = r.Next(vocab, dim);
        var wq = r.Next(layers, dim, dim); var wk = r.Next(layers, cfg.KvDim, dim); var wv = r.Next(layers, cfg.KvDim, dim);
        var wo = r.Next(layers, dim, dim);
        var w1 = r.Next(layers, hidden, dim); var w2 = r.Next(layers, dim, hidden); var w3 = r.Next(layers, hidden, dim);
        var cls = shared ? null : r.Next(vocab, dim);
        return Assemble(cfg, emb, attnNorm, wq, wk, wv, wo, ffnNorm, w1, w2, w3, finalNorm, cls);
    }

    static void CheckHeader(string path, int dim, int hidden, int layers, int heads, int kvHeads, int vocab, int seqLen)
    {
        bool plausible = dim is > 0 and <= 65536 && hidden is > 0 and <= 1 << 20 && layers is > 0 and <= 1024 &&
                         heads is > 0 and <= 1024 && kvHeads is > 0 and <= 1024 && vocab is > 0 and <= 1 << 22 &&
                         seqLen is > 0 and <= 1 << 22;
        if (!plausible)
            throw new InvalidDataException($"{path}: header (dim {dim}, hidden {hidden}, layers {layers}, heads {heads}, kv heads {kvHeads}, vocab {vocab}, seq_len {seqLen}) is not a llama2.c checkpoint (wrong magic or format)");
        if (dim % heads != 0 || heads % kvHeads != 0)
            throw new InvalidDataException($"{path}: dim {dim}, heads {heads} and kv heads {kvHeads} are inconsistent");
    }

    static ModelConfig MakeConfig(int dim, int hidden, int layers, int heads, int kvHeads, int vocab, int seqLen, bool shared) => new ModelConfig
    {
        ModelType = "llama2c", Dim = dim, HiddenDim = hidden, Layers = layers, Heads = heads, KvHeads = kvHeads,
        VocabSize = vocab, MaxSeqLen = seqLen, RopeTheta = 10000, RopeLayout = RopeLayout.Interleaved, NormEps = 1e-5,
        TieEmbeddings = shared, BosId = 1,
        EosIds = [1],   // llama2.c's run.c stops when the model emits BOS (id 1)
    }.Validate();

    static long WeightFloats(ModelConfig c)
    {
        long d = c.Dim, kv = c.KvDim, hf = c.HiddenDim, L = c.Layers;
        return c.VocabSize * d + L * d * 2 + L * (d * d * 2 + kv * d * 2) + L * hf * d * 3 + d;
    }

    static LlamaWeights Assemble(ModelConfig cfg, Tensor emb, Tensor attnNorm, Tensor wq, Tensor wk, Tensor wv, Tensor wo,
        Tensor ffnNorm, Tensor w1, Tensor w2, Tensor w3, Tensor finalNorm, Tensor? cls)
    {
        var layers = new LayerWeights[cfg.Layers];
        for (int l = 0; l < cfg.Layers; l++)
            layers[l] = new LayerWeights
            {
                AttnNorm = attnNorm[l].clone(), Wq = wq[l].clone(), Wk = wk[l].clone(), Wv = wv[l].clone(), Wo = wo[l].clone(),
                FfnNorm = ffnNorm[l].clone(), W1 = w1[l].clone(), W2 = w2[l].clone(), W3 = w3[l].clone(),
            };
        foreach (var t in new[] { attnNorm, wq, wk, wv, wo, ffnNorm, w1, w2, w3 }) t.Dispose();
        return new LlamaWeights { Config = cfg, TokenEmbedding = emb, Layers = layers, FinalNorm = finalNorm, LmHead = cls };
    }

    sealed class Reader(string path, byte[] bytes, long offset)
    {
        long _off = offset;
        public Tensor Next(params long[] shape)
        {
            long n = 1; foreach (var s in shape) n *= s;
            var floats = MemoryMarshal.Cast<byte, float>(bytes.AsSpan((int)_off, (int)(n * 4))).ToArray();
            foreach (var f in floats)
                if (!float.IsFinite(f)) throw new InvalidDataException($"{path}: non-finite weight at byte {_off}; the checkpoint is corrupt");
            _off += n * 4;
            return tensor(floats, shape);
        }
        public void Skip(long floats) => _off += floats * 4;
    }
}
