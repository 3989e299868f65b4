namespace Beagle.Decoding;

/// <summary>
/// Speculative decoding for one request: the draft-tree budget (EAGLE-2 dynamic tree, docs/architecture.md) and the
/// switches. Fields of <see cref="Tree"/> left null come from the budget measured for this machine and model (see
/// <see cref="TreeBudgetOptions"/> for how the two combine).
/// </summary>
public sealed record SpeculativeOptions
{
    /// <summary>The tree budget as asked for; null fields are left to calibration or the default.</summary>
    public TreeBudgetOptions Tree { get; init; } = TreeBudgetOptions.None;

    // Shorthands for the fields of Tree (object initialisers read better with them); they hold no state of their own.
    /// <summary><see cref="TreeBudgetOptions.Tokens"/>.</summary>
    public int? TreeTokens { get => Tree.Tokens; init => Tree = Tree with { Tokens = value }; }
    /// <summary><see cref="TreeBudgetOptions.Depth"/>.</summary>
    public int? TreeDepth { get => Tree.Depth; init => Tree = Tree with { Depth = value }; }
    /// <summary><see cref="TreeBudgetOptions.TopK"/>.</summary>
    public int? TreeTopK { get => Tree.TopK; init => Tree = Tree with { TopK = value }; }
    /// <summary><see cref="TreeBudgetOptions.MinProb"/>.</summary>
    public double? TreeMinProb { get => Tree.MinProb; init => Tree = Tree with { MinProb = value }; }

    /// <summary>Deeper draft nodes see their ancestors' draft states ("concate", on by default).</summary>
    public bool ConcatDraftStates { get; init; } = true;
    /// <summary>Turn speculation off and decode plainly (still counts statistics).</summary>
    public bool Disabled { get; init; }

    public SpeculativeOptions Validate()
    {
        Tree.Validate();
        return this;
    }
}
