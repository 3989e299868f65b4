namespace Beagle.Drafting;

/// <summary>A draft model (Beagle or EAGLE-2) that proposes tokens for the target to verify. Implemented in issue #3.</summary>
public interface IDraftModel : IDisposable
{
    /// <summary>"beagle" or "eagle2".</summary>
    string Architecture { get; }
}
