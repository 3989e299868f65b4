using Beagle.Training;
using Xunit;

namespace Beagle.Tests.Training;

/// <summary>
/// The masks against a naive construction that enumerates the windows explicitly (no modular arithmetic), position by
/// position, for several window sizes, offsets and steps.
/// </summary>
public class MaskTests
{
    /// <summary>Windows as explicit [start, end] ranges: the partial one before the first full window, then every k.</summary>
    static List<(int Start, int End)> NaiveWindows(int T, int k, int offset)
    {
        var list = new List<(int, int)>();
        if (offset > 0) list.Add((0, offset - 1));
        for (int s = offset; s < T; s += k) list.Add((s, Math.Min(s + k - 1, T - 1)));
        return list;
    }

    /// <summary>Naive mask: a query in the window starting at s (offset i = q - s + 1) sees true keys j ≤ s - 1 and, at
    /// simulation step `step`, the draft slots of offsets 1..min(step, i)-1 of its window; stage 1 is step 1.</summary>
    static bool[,] Naive(int T, int k, int offset, int step, bool withSlots)
    {
        int S = withSlots ? 2 * T : T;
        var m = new bool[T, S];
        foreach (var (s, e) in NaiveWindows(T, k, offset))
            for (int q = s; q <= e; q++)
            {
                if (s == 0) { m[q, 0] = true; continue; }   // no visible key: sink on key 0 (excluded from the losses)
                for (int j = 0; j < s; j++) m[q, j] = true;
                int i = q - s + 1;
                if (withSlots)
                    for (int o = 1; o < Math.Min(step, i); o++) m[q, T + s + o - 1] = true;
            }
        return m;
    }

    static void AssertEqual(bool[,] expected, TorchSharp.torch.Tensor actual)
    {
        int T = expected.GetLength(0), S = expected.GetLength(1);
        Assert.Equal([T, S], actual.shape);
        var a = actual.data<bool>().ToArray();
        for (int q = 0; q < T; q++)
            for (int j = 0; j < S; j++)
                Assert.True(expected[q, j] == a[q * S + j], $"query {q}, key {j}: expected {expected[q, j]}");
    }

    [Theory]
    [InlineData(12, 3, 0)] [InlineData(12, 3, 1)] [InlineData(12, 3, 2)]
    [InlineData(23, 5, 0)] [InlineData(23, 5, 4)] [InlineData(7, 1, 0)] [InlineData(9, 9, 3)]
    public void InverseBlockMaskMatchesTheNaiveWindows(int T, int k, int offset)
    {
        using var m = Masks.InverseBlock(T, k, offset);
        AssertEqual(Naive(T, k, offset, 1, withSlots: false), m);
    }

    [Theory]
    [InlineData(12, 3, 0)] [InlineData(12, 3, 2)] [InlineData(23, 5, 1)] [InlineData(23, 5, 4)] [InlineData(16, 4, 3)]
    public void SimulationMaskMatchesTheNaiveWindowsAtEveryStep(int T, int k, int offset)
    {
        for (int step = 1; step <= k; step++)
        {
            using var m = Masks.Simulation(T, k, offset, step);
            AssertEqual(Naive(T, k, offset, step, withSlots: true), m);
        }
    }

    [Fact]
    public void OffsetOneIsExactlyCausalDraftingStepOne()
    {
        // Query at offset 1 sees h_{<q}: every true state before it, nothing else.
        int T = 20, k = 4;
        for (int offset = 0; offset < k; offset++)
        {
            var m = Masks.InverseBlock(T, k, offset).data<bool>().ToArray();
            foreach (var q in Masks.PositionsAtOffset(T, k, offset, 1))
                for (int j = 0; j < T; j++) Assert.Equal(j < q, m[q * T + j]);
        }
    }

    [Fact]
    public void AtStepIOnlyTheOffsetIQuerySeesExactlyItsAncestorsDraftStates()
    {
        // The query that counts at step i sees true states ≤ w and the draft slots w+1..w+i-1: what drafting depth i
        // sees at inference with the ancestors' draft states concatenated.
        int T = 17, k = 5, offset = 2;
        for (int step = 1; step <= k; step++)
        {
            var m = Masks.Simulation(T, k, offset, step).data<bool>().ToArray();
            foreach (var q in Masks.PositionsAtOffset(T, k, offset, step))
            {
                int w = (int)q - step;
                for (int j = 0; j < T; j++) Assert.Equal(j <= w, m[q * 2 * T + j]);
                for (int p = 0; p < T; p++) Assert.Equal(p > w && p < q, m[q * 2 * T + T + p]);
            }
        }
    }

    [Fact]
    public void ValidQueriesExcludeOnlyTheWindowThatStartsAtZero()
    {
        Assert.Equal([false, false, false, true, true, true, true], Masks.ValidQueries(7, 3, 0));
        Assert.Equal([false, true, true, true, true, true, true], Masks.ValidQueries(7, 3, 1));
        Assert.Equal([2L, 5L], Masks.PositionsAtOffset(7, 3, 2, 1));
    }
}
