namespace Beagle.Drafting;

/// <summary>
/// Bookkeeping of one drafting round: the nodes expanded so far (numbered in call order), their parents and
/// positions, and which of them own a draft-state slot in the session's K/V buffer (slot numbers are relative to the
/// start of the round region). Plain arrays, no tensors.
/// </summary>
internal sealed class RoundTree
{
    readonly int[] _parent, _position, _slot;

    public RoundTree(int maxNodes)
    {
        _parent = new int[maxNodes]; _position = new int[maxNodes]; _slot = new int[maxNodes];
        Array.Fill(_slot, -1);
    }

    /// <summary>Nodes expanded this round.</summary>
    public int Count { get; private set; }
    /// <summary>Draft-state slots used this round.</summary>
    public int SlotsUsed { get; private set; }
    public int Capacity => _parent.Length;
    /// <summary>Bytes of the bookkeeping arrays.</summary>
    public long Bytes => 3L * _parent.Length * sizeof(int);

    public int Parent(int node) => _parent[node];
    public int Position(int node) => _position[node];
    public int Slot(int node) => _slot[node];

    /// <summary>Checks a batch before it is added: parents are -1 or nodes of earlier calls of this round.</summary>
    public void Validate(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<int> parents, int maxPositions)
    {
        int n = tokens.Length;
        if (n == 0) throw new ArgumentException("no nodes to expand", nameof(tokens));
        if (positions.Length != n || parents.Length != n)
            throw new ArgumentException($"{n} tokens but {positions.Length} positions and {parents.Length} parents");
        if (Count + n > Capacity)
            throw new InvalidOperationException($"a round can expand at most {Capacity} nodes; call EndRound");
        for (int i = 0; i < n; i++)
        {
            if (parents[i] < -1 || parents[i] >= Count)
                throw new ArgumentOutOfRangeException(nameof(parents), $"parent {parents[i]} of node {Count + i} is not -1 or a node of an earlier Expand of this round (0..{Count - 1})");
            if ((uint)positions[i] >= (uint)maxPositions)
                throw new ArgumentOutOfRangeException(nameof(positions), $"position {positions[i]} is beyond the draft's rotary tables ({maxPositions})");
            if (parents[i] >= 0 && positions[i] != _position[parents[i]] + 1)
                throw new ArgumentException($"node {Count + i} at position {positions[i]} is not one deeper than its parent (position {_position[parents[i]]})", nameof(positions));
        }
    }

    /// <summary>Adds a validated batch; returns the number of its first node.</summary>
    public int Add(ReadOnlySpan<int> positions, ReadOnlySpan<int> parents)
    {
        int first = Count;
        for (int i = 0; i < positions.Length; i++) { _parent[first + i] = parents[i]; _position[first + i] = positions[i]; }
        Count += positions.Length;
        return first;
    }

    /// <summary>Gives <paramref name="node"/> the next free slot.</summary>
    public int AssignSlot(int node)
    {
        if (SlotsUsed >= Capacity) throw new InvalidOperationException("round draft-state region is full");
        return _slot[node] = SlotsUsed++;
    }

    /// <summary>
    /// Fills one mask row (length ≥ committed + SlotsUsed): committed columns true, then the slots of
    /// <paramref name="firstAncestor"/> and its ancestors.
    /// </summary>
    public void FillRow(Span<bool> row, int committed, int firstAncestor)
    {
        row[..committed].Fill(true);
        for (int a = firstAncestor; a >= 0; a = _parent[a])
            if (_slot[a] >= 0) row[committed + _slot[a]] = true;
    }

    public void Clear()
    {
        Array.Fill(_slot, -1, 0, Math.Max(Count, SlotsUsed));
        Count = 0; SlotsUsed = 0;
    }
}
