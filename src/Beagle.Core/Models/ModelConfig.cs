namespace Beagle.Models;

/// <summary>How rotary embeddings pair up the dimensions of a head.</summary>
public enum RopeLayout
{
    /// <summary>llama2.c / Meta: rotate adjacent pairs (2i, 2i+1).</summary>
    Interleaved,
    /// <summary>Hugging Face: rotate (i, i + headDim/2); HF checkpoints permute wq/wk rows to get it.</summary>
    HalfSplit,
}

/// <summary>Rotary scaling, as in Hugging Face's <c>rope_scaling</c>. Only <c>default</c> and <c>llama3</c> are supported.</summary>
public sealed record RopeScaling(string Type, double Factor = 1.0, double LowFreqFactor = 1.0, double HighFreqFactor = 4.0,
    int OriginalMaxPositionEmbeddings = 8192);

/// <summary>
/// Everything about a Llama-family target that changes its math. Every field is bound by a reader and checked by
/// <see cref="Validate"/>: an unsupported value is refused loudly, never ignored (style.md, rule 4).
/// </summary>
public sealed record ModelConfig
{
    public required string ModelType { get; init; }        // "llama2c", "llama", "qwen2", "mistral"
    public required int Dim { get; init; }                 // d: hidden size
    public required int HiddenDim { get; init; }           // MLP intermediate size
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    public required int VocabSize { get; init; }
    public required int MaxSeqLen { get; init; }
    public int HeadDim { get; init; }                       // 0 = Dim / Heads
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }
    public RopeLayout RopeLayout { get; init; } = RopeLayout.Interleaved;
    public double NormEps { get; init; } = 1e-5;
    public bool TieEmbeddings { get; init; }
    public bool QkvBias { get; init; }                      // qwen2
    public int? SlidingWindow { get; init; }                // mistral; null = full attention
    public int BosId { get; init; } = 1;
    public IReadOnlyList<int> EosIds { get; init; } = [2];

    public int EffectiveHeadDim => HeadDim > 0 ? HeadDim : Dim / Heads;
    public int QDim => Heads * EffectiveHeadDim;
    public int KvDim => KvHeads * EffectiveHeadDim;
    public int GroupSize => Heads / KvHeads;

    /// <summary>Throws <see cref="InvalidDataException"/> naming the first field that is out of range.</summary>
    public ModelConfig Validate()
    {
        static void Check(bool ok, string message) { if (!ok) throw new InvalidDataException(message); }
        Check(Dim > 0, $"dim must be positive, got {Dim}");
        Check(HiddenDim > 0, $"hidden (intermediate) size must be positive, got {HiddenDim}");
        Check(Layers > 0, $"number of layers must be positive, got {Layers}");
        Check(Heads > 0, $"number of attention heads must be positive, got {Heads}");
        Check(KvHeads > 0 && Heads % KvHeads == 0, $"key/value heads ({KvHeads}) must divide attention heads ({Heads})");
        Check(HeadDim > 0 || Dim % Heads == 0, $"dim ({Dim}) is not divisible by heads ({Heads}) and no head_dim is given");
        Check(EffectiveHeadDim % 2 == 0, $"head dimension must be even for rotary embeddings, got {EffectiveHeadDim}");
        Check(VocabSize > 0, $"vocabulary size must be positive, got {VocabSize}");
        Check(MaxSeqLen > 0, $"maximum sequence length must be positive, got {MaxSeqLen}");
        Check(RopeTheta > 0, $"rope_theta must be positive, got {RopeTheta}");
        Check(NormEps > 0 && NormEps < 1, $"rms_norm_eps must be in (0, 1), got {NormEps}");
        Check(BosId >= 0 && BosId < VocabSize, $"bos id {BosId} is outside the vocabulary (size {VocabSize})");
        foreach (var e in EosIds) Check(e >= 0 && e < VocabSize, $"eos id {e} is outside the vocabulary (size {VocabSize})");
        if (RopeScaling is { } s)
        {
            Check(s.Type is "default" or "llama3",
                $"rope_scaling type '{s.Type}' is not supported (supported: default, llama3); refusing rather than computing wrong positions");
            if (s.Type == "llama3")
            {
                Check(s.Factor >= 1, $"rope_scaling.factor must be >= 1, got {s.Factor}");
                Check(s.HighFreqFactor > s.LowFreqFactor, $"rope_scaling.high_freq_factor ({s.HighFreqFactor}) must exceed low_freq_factor ({s.LowFreqFactor})");
                Check(s.OriginalMaxPositionEmbeddings > 0, "rope_scaling.original_max_position_embeddings must be positive");
            }
        }
        if (SlidingWindow is { } w) Check(w > 0, $"sliding_window must be positive, got {w}");
        return this;
    }
}
