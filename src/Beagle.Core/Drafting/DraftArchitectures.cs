using System.Diagnostics.CodeAnalysis;

namespace Beagle.Drafting;

/// <summary>
/// The registry of draft architectures, by name: the one place a name in a checkpoint, an option or a config becomes
/// code. The built-in architectures register here, one line each; an application (or a test) adds its own with
/// <see cref="Register"/> before loading or creating drafts of it. Thread-safe.
/// </summary>
public static class DraftArchitectures
{
    static readonly Lock Gate = new();
    static readonly List<DraftArchitecture> All = [];

    static DraftArchitectures()
    {
        Register(new BeagleArchitecture());
        Register(new Eagle2Architecture());
    }

    /// <summary>
    /// Adds <paramref name="architecture"/>. Registering the same type under its name again is a no-op (a test may run
    /// twice in one process); another type under a taken name is refused (InvalidOperationException), since a
    /// checkpoint's name must mean one thing.
    /// </summary>
    public static void Register(DraftArchitecture architecture)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        string name = architecture.Name;
        if (string.IsNullOrWhiteSpace(name) || name != name.Trim().ToLowerInvariant())
            throw new ArgumentException($"a draft architecture's name must be non-empty lower case without surrounding spaces, got '{name}'", nameof(architecture));
        lock (Gate)
        {
            var existing = All.Find(a => a.Name == name);
            if (existing is null) { All.Add(architecture); return; }
            if (existing.GetType() != architecture.GetType())
                throw new InvalidOperationException($"draft architecture '{name}' is already registered by {existing.GetType().FullName}");
        }
    }

    /// <summary>The architecture registered as <paramref name="name"/>; InvalidDataException naming the registered ones otherwise.</summary>
    public static DraftArchitecture Get(string name) => TryGet(name, out var a) ? a
        : throw new InvalidDataException($"draft architecture '{name}' is not supported (supported: {string.Join(", ", Names)})");

    public static bool TryGet(string? name, [NotNullWhen(true)] out DraftArchitecture? architecture)
    {
        lock (Gate) architecture = All.Find(a => a.Name == name);
        return architecture is not null;
    }

    /// <summary>Registered names, in registration order (the built-in ones first).</summary>
    public static IReadOnlyList<string> Names { get { lock (Gate) return All.Select(a => a.Name).ToArray(); } }

    /// <summary>Names of the architectures that have a trainer.</summary>
    public static IReadOnlyList<string> Trainable { get { lock (Gate) return All.Where(a => a.IsTrainable).Select(a => a.Name).ToArray(); } }
}
