namespace Beagle.Tests.Infrastructure;

/// <summary>
/// Managed bytes allocated on the calling thread by code that should allocate nothing, measured in several windows.
/// In a loaded parallel test run a single window now and then sees a few KB on the test's thread that the measured code
/// does not make (the runtime's own work, e.g. as it recompiles hot methods; it does not recur): an allocation in the
/// measured code recurs in every window, so "at most one window allocated" tells the two apart.
/// </summary>
public static class Allocations
{
    /// <summary>Runs <paramref name="action"/> <paramref name="iterations"/> times per window after as many untimed; returns each window's bytes.</summary>
    public static long[] PerWindow(Action action, int windows = 5, int iterations = 20)
    {
        for (int i = 0; i < iterations; i++) action();
        var bytes = new long[windows];
        for (int w = 0; w < windows; w++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < iterations; i++) action();
            bytes[w] = GC.GetAllocatedBytesForCurrentThread() - before;
        }
        return bytes;
    }

    /// <summary>Fails unless at most one window of <see cref="PerWindow"/> allocated anything.</summary>
    public static void AssertNone(Action action, string what)
    {
        var bytes = PerWindow(action);
        if (bytes.Count(b => b != 0) > 1)
            throw new Xunit.Sdk.XunitException($"{what} allocated in {bytes.Count(b => b != 0)} of {bytes.Length} windows: {string.Join(", ", bytes)} B");
    }
}
