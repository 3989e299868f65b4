using System.Text.Json;
using System.Text.Json.Serialization;
using Beagle.Models;

namespace Beagle.Drafting;

/// <summary>
/// Shape of a draft model (Beagle or EAGLE-2). Serialised into <c>draft.json</c> with snake_case names; every field is
/// bound and checked by <see cref="Validate"/> (style.md, rule 4). <see cref="ForTarget"/> gives the default sizing:
/// the target's width, head layout and MLP size (docs/method.md, "The draft", [ours]).
/// </summary>
public sealed record DraftConfig
{
    public const string Beagle = "beagle";
    public const string Eagle2 = "eagle2";

    /// <summary>A registered architecture's name (<see cref="DraftArchitectures"/>): "beagle" (one cross-attention block), "eagle2" (fusion linear + one Llama decoder layer), or one an application registered.</summary>
    public required string Architecture { get; init; }
    /// <summary>d: must equal the target's hidden size (the draft reads its embedding and writes its LM head's input).</summary>
    public required int Dim { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    /// <summary>SwiGLU intermediate size.</summary>
    public required int HiddenDim { get; init; }
    public double RopeTheta { get; init; } = 10000.0;
    public double NormEps { get; init; } = 1e-5;
    /// <summary>Size of the rotary tables: the largest position + 1 the draft can be asked about.</summary>
    public required int MaxPositions { get; init; }
    /// <summary>Draft index → target token id (a reduced output vocabulary), or null for the target's full vocabulary.</summary>
    public int[]? DraftVocab { get; init; }

    [JsonIgnore] public int QDim => Heads * HeadDim;
    [JsonIgnore] public int KvDim => KvHeads * HeadDim;
    [JsonIgnore] public int GroupSize => Heads / KvHeads;

    /// <summary>Default draft for a target: its width, heads, kv-heads, head dim, MLP size, rope theta, eps and context.</summary>
    public static DraftConfig ForTarget(ModelConfig target, string architecture = Beagle, int[]? draftVocab = null) => new DraftConfig
    {
        Architecture = architecture,
        Dim = target.Dim,
        Heads = target.Heads,
        KvHeads = target.KvHeads,
        HeadDim = target.EffectiveHeadDim,
        HiddenDim = target.HiddenDim,
        RopeTheta = target.RopeTheta,
        NormEps = target.NormEps,
        MaxPositions = target.MaxSeqLen,
        DraftVocab = draftVocab,
    }.Validate();

    /// <summary>Throws <see cref="InvalidDataException"/> naming the first bad field.</summary>
    public DraftConfig Validate()
    {
        static void Check(bool ok, string message) { if (!ok) throw new InvalidDataException("draft config: " + message); }
        Check(DraftArchitectures.TryGet(Architecture, out _), $"architecture '{Architecture}' is not supported (supported: {string.Join(", ", DraftArchitectures.Names)})");
        Check(Dim > 0, $"dim must be positive, got {Dim}");
        Check(Heads > 0, $"heads must be positive, got {Heads}");
        Check(KvHeads > 0 && Heads % KvHeads == 0, $"kv_heads ({KvHeads}) must divide heads ({Heads})");
        Check(HeadDim > 0 && HeadDim % 2 == 0, $"head_dim must be positive and even (rotary), got {HeadDim}");
        Check(HiddenDim > 0, $"hidden_dim must be positive, got {HiddenDim}");
        Check(RopeTheta > 0, $"rope_theta must be positive, got {RopeTheta}");
        Check(NormEps > 0 && NormEps < 1, $"norm_eps must be in (0, 1), got {NormEps}");
        Check(MaxPositions > 0, $"max_positions must be positive, got {MaxPositions}");
        if (DraftVocab is { } dv)
        {
            Check(dv.Length > 0, "draft_vocab is empty (use null for the full vocabulary)");
            var seen = new HashSet<int>();
            foreach (var id in dv) Check(id >= 0 && seen.Add(id), $"draft_vocab has a negative or repeated id {id}");
        }
        return this;
    }

    /// <summary>Checks that the draft fits <paramref name="target"/> (width and vocabulary ids).</summary>
    public void CheckAgainst(ModelConfig target)
    {
        if (Dim != target.Dim)
            throw new InvalidDataException($"draft dim {Dim} does not match the target's hidden size {target.Dim}");
        if (DraftVocab is { } dv)
            foreach (var id in dv)
                if (id >= target.VocabSize)
                    throw new InvalidDataException($"draft_vocab id {id} is outside the target vocabulary (size {target.VocabSize})");
    }

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    public static DraftConfig FromJson(string json) =>
        (JsonSerializer.Deserialize<DraftConfig>(json, Json) ?? throw new InvalidDataException("draft config: empty JSON")).Validate();
}
