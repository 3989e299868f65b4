using TorchSharp;
using static TorchSharp.torch;

namespace Beagle.Models;

/// <summary>
/// A key/value cache for one sequence, allocated once at its full capacity (no concatenation per step).
/// Layout per layer: [kvHeads, headDim, capacity], head-dimension-major: the C# attention kernel (ManagedAttention)
/// computes a head's scores as headDim multiply-adds over contiguous slots and its output as headDim dot products over
/// contiguous slots, and libtorch reads a prefix as views (keys already transposed for the score product, values as a
/// transposed view). Slots [0, Length) hold committed positions. A forward writes its T positions at
/// [Length, Length+T) and advances Length; tree verification then keeps only the accepted slots with
/// <see cref="KeepSlots"/>. The cache owns its tensors (they live outside any dispose scope) and frees them on Dispose.
/// </summary>
public sealed class KvCache : IDisposable
{
    readonly Tensor _k, _v;                 // [L, kvH, hd, capacity]
    internal readonly Tensor[] K, V;        // per-layer views [kvH, hd, capacity]

    public int Capacity { get; }
    /// <summary>Memory of the keys and values, in bytes.</summary>
    public long Bytes => 2 * _k.NumberOfElements * _k.ElementSize;
    /// <summary>Number of committed positions.</summary>
    public int Length { get; private set; }

    internal KvCache(ModelConfig c, int capacity, Device device)
    {
        Capacity = capacity;
        using var scope = NewDisposeScope();
        _k = zeros([c.Layers, c.KvHeads, c.EffectiveHeadDim, capacity], device: device).DetachFromDisposeScope();
        _v = zeros([c.Layers, c.KvHeads, c.EffectiveHeadDim, capacity], device: device).DetachFromDisposeScope();
        K = new Tensor[c.Layers]; V = new Tensor[c.Layers];
        for (int l = 0; l < c.Layers; l++) { K[l] = _k[l].DetachFromDisposeScope(); V[l] = _v[l].DetachFromDisposeScope(); }
    }

    /// <summary>Reserves T slots for a forward; returns the first slot. Throws when the sequence would exceed capacity.</summary>
    internal int Advance(int count)
    {
        if (Length + count > Capacity)
            throw new InvalidOperationException($"sequence of {Length + count} positions exceeds the context length {Capacity}");
        int start = Length;
        Length += count;
        return start;
    }

    /// <summary>Forgets every position from <paramref name="length"/> on.</summary>
    public void Rewind(int length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length));
        Length = length;
    }

    /// <summary>
    /// Keeps the given slots (each &gt;= <paramref name="start"/>, in order) as positions start, start+1, …, and drops the
    /// rest. Used after tree verification: slots are the accepted path's tree slots. Two ops per tensor, all layers at once.
    /// </summary>
    public void KeepSlots(int start, ReadOnlySpan<long> slots)
    {
        if (start < 0 || start > Length) throw new ArgumentOutOfRangeException(nameof(start));
        bool identity = true;
        for (int i = 0; i < slots.Length; i++)
        {
            if (slots[i] < start || slots[i] >= Length) throw new ArgumentOutOfRangeException(nameof(slots), $"slot {slots[i]} is outside [{start}, {Length})");
            if (i > 0 && slots[i] <= slots[i - 1]) throw new ArgumentException("slots must be in ascending order", nameof(slots));
            if (slots[i] != start + i) identity = false;
        }
        if (!identity && _k.device_type == DeviceType.CPU)
        {
            // In place over the tensors' memory (~1,000 floats for a stories260K tree; the four tensor ops below cost
            // ~30 µs a round there). Slots ascend and slots[i] >= start + i, so moving them in order never overwrites a
            // slot still to be read.
            var k = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(_k.bytes);
            var v = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(_v.bytes);
            for (int row = 0; row < k.Length / Capacity; row++)   // row: (layer, kv head, head dimension)
            {
                var kr = k.Slice(row * Capacity, Capacity); var vr = v.Slice(row * Capacity, Capacity);
                for (int i = 0; i < slots.Length; i++) { kr[start + i] = kr[(int)slots[i]]; vr[start + i] = vr[(int)slots[i]]; }
            }
        }
        else if (!identity)
        {
            using var scope = NewDisposeScope();
            var src = tensor(slots.ToArray(), device: _k.device);
            var dst = arange(start, start + slots.Length, dtype: ScalarType.Int64, device: _k.device);
            _k.index_copy_(3, dst, _k.index_select(3, src));
            _v.index_copy_(3, dst, _v.index_select(3, src));
        }
        Length = start + slots.Length;
    }

    public void Dispose()
    {
        foreach (var t in K) t.Dispose();
        foreach (var t in V) t.Dispose();
        _k.Dispose(); _v.Dispose();
    }
}
