namespace Beagle.Decoding;

/// <summary>A resolved tree budget: at most <paramref name="Tokens"/> verified per round (root included), at most
/// <paramref name="Depth"/> draft steps, <paramref name="TopK"/> children per expanded node, and nodes below the
/// confidence floor <paramref name="MinProb"/> (path probability under the draft; 0 = no floor) dropped.</summary>
public readonly record struct TreeBudget(int Tokens, int Depth, int TopK, double MinProb = 0)
{
    /// <summary>The ranges every face accepts (checked by <see cref="TreeBudgetOptions.Validate"/>).</summary>
    public const int MinTokens = 2, MaxTokens = 256, MinDepth = 1, MaxDepth = 32, MinTopK = 1, MaxTopK = 64;

    /// <summary>Options that ask for exactly this budget.</summary>
    public SpeculativeOptions ToOptions() => new() { Tree = TreeBudgetOptions.Exactly(this) };

    public override string ToString() => MinProb > 0 ? FormattableString.Invariant($"{Tokens}/{Depth}/{TopK} p>={MinProb}") : $"{Tokens}/{Depth}/{TopK}";

    /// <summary>
    /// Used when neither the caller nor a calibration chose one: a chain of 3 draft tokens. For stories5M and its bundled
    /// drafts on a 2-core CPU chains of 3 to 7 measured alike (Beagle 1.64x at 4/3/1 and 6/5/1, 1.62x at 8/7/1, 1.55x at
    /// 10/9/1; a 16/5/4 tree 0.81x: each verified token costs a quarter of a target step on a CPU, docs/benchmarks.md),
    /// and a short chain also suits weaker drafts. GPUs, where verification is cheap next to decoding, want deeper or
    /// wider trees: calibrate (TreeBudgetCalibrator) or pass a budget.
    /// </summary>
    public static TreeBudget Default { get; } = new(4, 3, 1);

    /// <summary>The budget <paramref name="o"/> asks for over <paramref name="fallback"/> (see <see cref="TreeBudgetOptions.Over"/>).</summary>
    public static TreeBudget Resolve(SpeculativeOptions o, TreeBudget fallback) => o.Tree.Over(fallback);
}

/// <summary>The names a face gives the four budget settings, so that an error names the setting its user typed.</summary>
public sealed record TreeBudgetSettingNames(string Tokens, string Depth, string TopK, string MinProb)
{
    /// <summary>The names of <see cref="SpeculativeOptions"/>' properties (the default).</summary>
    public static TreeBudgetSettingNames Code { get; } = new("TreeTokens", "TreeDepth", "TreeTopK", "TreeMinProb");
}

/// <summary>
/// A tree budget as asked for: each field may be left to the basis (null). The one type every face's budget settings
/// (CLI <c>--tree-*</c>, Semantic Kernel <c>tree_*</c>, ML.NET <c>Tree*</c>, <see cref="SpeculativeOptions"/>) turn into,
/// and the one place they are validated.
/// <para>How a partial budget and the basis (the calibrated budget, else <see cref="TreeBudget.Default"/>) combine
/// (<see cref="Over"/>): every field named here is used exactly as given; the others come from the basis. A tree of
/// depth d and top-k k can hold at most d·k + 1 tokens (root included), so:</para>
/// <list type="bullet">
/// <item>tokens named together with depth and top-k that cannot hold them: refused by <see cref="Validate"/>;</item>
/// <item>tokens named, depth or top-k from the basis, and they cannot hold them: refused by <see cref="Over"/>, naming the
/// settings to add (never shrunk in silence);</item>
/// <item>tokens from the basis, depth or top-k named and too small for them: the basis' token count is lowered to
/// d·k + 1, the most the named shape holds (the user named the shape; the count was nobody's choice).</item>
/// </list>
/// </summary>
public sealed record TreeBudgetOptions
{
    /// <summary>Tokens verified per round, including the root (the last accepted token). 2..256.</summary>
    public int? Tokens { get; init; }
    /// <summary>
    /// Draft steps per round (tree depth). 1..32. A round expands at most 512 draft nodes (1 + top-k per further depth),
    /// so with a large top-k the tree stops growing at depth 1 + 511 / top-k (e.g. 8 at top-k 64).
    /// </summary>
    public int? Depth { get; init; }
    /// <summary>Children expanded per frontier node and frontier width. 1..64; 1 = a chain.</summary>
    public int? TopK { get; init; }
    /// <summary>
    /// Confidence floor in [0, 1): draft nodes whose path probability under the draft is below it are neither expanded
    /// nor verified, so a round drafts deep where the draft is sure and stops early where it is not (0 = off: EAGLE-2's
    /// fixed-size tree). See <see cref="Beagle.Drafting.DraftTree.Build"/>.
    /// </summary>
    public double? MinProb { get; init; }

    /// <summary>Nothing named: the basis as it is.</summary>
    public static TreeBudgetOptions None { get; } = new();

    /// <summary>Every field named: exactly <paramref name="b"/>, whatever the basis.</summary>
    public static TreeBudgetOptions Exactly(TreeBudget b) => new() { Tokens = b.Tokens, Depth = b.Depth, TopK = b.TopK, MinProb = b.MinProb };

    /// <summary>True when no field is named (the whole budget is left to calibration or the default).</summary>
    public bool IsEmpty => Tokens is null && Depth is null && TopK is null && MinProb is null;

    /// <summary>True when every field is named, so no basis (and no calibration) is needed.</summary>
    public bool IsComplete => Tokens is not null && Depth is not null && TopK is not null && MinProb is not null;

    /// <summary>
    /// Checks each named field's range and, when tokens, depth and top-k are all named, that the tree can hold the tokens.
    /// Errors are ArgumentOutOfRangeException (a range) or ArgumentException (the combination), with the setting's name
    /// from <paramref name="names"/> (default: <see cref="TreeBudgetSettingNames.Code"/>) as ParamName and in the message.
    /// </summary>
    public TreeBudgetOptions Validate(TreeBudgetSettingNames? names = null)
    {
        names ??= TreeBudgetSettingNames.Code;
        if (Tokens is { } n && (n < TreeBudget.MinTokens || n > TreeBudget.MaxTokens))
            throw new ArgumentOutOfRangeException(names.Tokens, n, $"{names.Tokens} must be in [{TreeBudget.MinTokens}, {TreeBudget.MaxTokens}]");
        if (Depth is { } d && (d < TreeBudget.MinDepth || d > TreeBudget.MaxDepth))
            throw new ArgumentOutOfRangeException(names.Depth, d, $"{names.Depth} must be in [{TreeBudget.MinDepth}, {TreeBudget.MaxDepth}]");
        if (TopK is { } k && (k < TreeBudget.MinTopK || k > TreeBudget.MaxTopK))
            throw new ArgumentOutOfRangeException(names.TopK, k, $"{names.TopK} must be in [{TreeBudget.MinTopK}, {TreeBudget.MaxTopK}]");
        if (MinProb is { } p && !(p >= 0 && p < 1))
            throw new ArgumentOutOfRangeException(names.MinProb, p, $"{names.MinProb} must be in [0, 1)");
        if (Tokens is { } t && Depth is { } dd && TopK is { } kk && t - 1 > (long)dd * kk)
            throw new ArgumentException($"{names.Tokens} {t} cannot be held by a tree of {names.Depth} {dd} and {names.TopK} {kk}: " +
                $"at most {dd * kk + 1} tokens (depth x top-k + 1); raise {names.Depth} or {names.TopK}, or lower {names.Tokens}", names.Tokens);
        return this;
    }

    /// <summary>
    /// The budget to decode with: the named fields over <paramref name="basis"/> (see the type's summary for how they
    /// combine). Throws ArgumentException when named tokens cannot fit the basis' depth and top-k.
    /// </summary>
    /// <param name="basisName">What the basis is, for the message (e.g. "the calibrated budget").</param>
    public TreeBudget Over(TreeBudget basis, TreeBudgetSettingNames? names = null, string basisName = "the default budget")
    {
        names ??= TreeBudgetSettingNames.Code;
        Validate(names);
        int depth = Depth ?? basis.Depth, topK = TopK ?? basis.TopK;
        long capacity = (long)depth * topK + 1;
        int tokens;
        if (Tokens is { } t)
        {
            if (t > capacity)
                throw new ArgumentException($"{names.Tokens} {t} cannot be held by a tree of depth {depth} and top-k {topK} " +
                    $"({(Depth is null ? $"depth from {basisName}" : names.Depth)}, {(TopK is null ? $"top-k from {basisName}" : names.TopK)}): " +
                    $"at most {capacity} tokens; name {names.Depth} and {names.TopK} too, or lower {names.Tokens}", names.Tokens);
            tokens = t;
        }
        else tokens = (int)Math.Min(basis.Tokens, capacity);
        return new TreeBudget(tokens, depth, topK, MinProb ?? basis.MinProb);
    }

    public override string ToString() =>
        $"{(Tokens?.ToString() ?? "*")}/{(Depth?.ToString() ?? "*")}/{(TopK?.ToString() ?? "*")}" + (MinProb is { } p ? FormattableString.Invariant($" p>={p}") : "");
}
