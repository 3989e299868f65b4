using System.Buffers;

namespace Beagle.Compute;

/// <summary>
/// The float arrays of the CPU forward (its intermediates, and its outputs: <c>ForwardBuffers</c>), pooled so that a
/// decoding round allocates none. One pool per thread: a forward rents and returns its intermediates on its own
/// thread, and a thread's pool then always holds what its next forward needs, whatever other threads do at the same
/// time (a shared pool allocates whenever a forward elsewhere holds the arrays this one wants; .NET's shared pool also
/// drops arrays on full collections). The cost: each thread that runs CPU forwards keeps the arrays its largest
/// forward used (a few hundred KB for stories models; tens of MB for a 1B model's 32-row forward with its logits).
/// </summary>
internal static class HostPool
{
    [ThreadStatic] static ArrayPool<float>? t_floats;

    /// <summary>This thread's pool: arrays up to 2^28 floats, 8 of each size class; larger ones are allocated each time.</summary>
    public static ArrayPool<float> Floats => t_floats ??= ArrayPool<float>.Create(maxArrayLength: 1 << 28, maxArraysPerBucket: 8);
}
