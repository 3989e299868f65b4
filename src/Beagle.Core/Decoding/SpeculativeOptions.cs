namespace Beagle.Decoding;

/// <summary>
/// Draft-tree budget for speculative decoding (EAGLE-2 dynamic tree, docs/architecture.md).
/// A null field means "use the budget measured for this machine and model" (see TreeBudget).
/// </summary>
public sealed record SpeculativeOptions
{
    /// <summary>Tokens verified per round, including the root (the last accepted token). 2..256.</summary>
    public int? TreeTokens { get; init; }
    /// <summary>
    /// Draft steps per round (tree depth). 1..32. A round expands at most 512 draft nodes (1 + top-k per further depth),
    /// so with a large top-k the tree stops growing at depth 1 + 511 / top-k (e.g. 8 at top-k 64).
    /// </summary>
    public int? TreeDepth { get; init; }
    /// <summary>Children expanded per frontier node and frontier width. 1..64; 1 = a chain.</summary>
    public int? TreeTopK { get; init; }
    /// <summary>
    /// Confidence floor in [0, 1): draft nodes whose path probability under the draft is below it are neither expanded
    /// nor verified, so a round drafts deep where the draft is sure and stops early where it is not (0 = off: EAGLE-2's
    /// fixed-size tree). See <see cref="Beagle.Drafting.DraftTree.Build"/>.
    /// </summary>
    public double? TreeMinProb { get; init; }
    /// <summary>Deeper draft nodes see their ancestors' draft states ("concate", on by default).</summary>
    public bool ConcatDraftStates { get; init; } = true;
    /// <summary>Turn speculation off and decode plainly (still counts statistics).</summary>
    public bool Disabled { get; init; }

    public SpeculativeOptions Validate()
    {
        if (TreeTokens is { } n && (n < 2 || n > 256)) throw new ArgumentOutOfRangeException(nameof(TreeTokens), n, "tree tokens must be in [2, 256]");
        if (TreeDepth is { } d && (d < 1 || d > 32)) throw new ArgumentOutOfRangeException(nameof(TreeDepth), d, "tree depth must be in [1, 32]");
        if (TreeTopK is { } k && (k < 1 || k > 64)) throw new ArgumentOutOfRangeException(nameof(TreeTopK), k, "tree top-k must be in [1, 64]");
        if (TreeMinProb is { } p && !(p >= 0 && p < 1)) throw new ArgumentOutOfRangeException(nameof(TreeMinProb), p, "tree min-prob must be in [0, 1)");
        return this;
    }
}
