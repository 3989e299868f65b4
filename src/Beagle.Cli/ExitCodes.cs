namespace Beagle.Cli;

/// <summary>The process exit codes of <c>beagle</c> (documented in docs/cli.md; scripts rely on them).</summary>
public static class ExitCodes
{
    public const int Ok = 0;
    /// <summary>Anything that went wrong while running: unreadable checkpoint, vocabulary mismatch, I/O.</summary>
    public const int RuntimeError = 1;
    /// <summary>Unknown command or option, a bad option value, a missing file named on the command line.</summary>
    public const int Usage = 2;
    /// <summary>No --target and the default model is neither present nor downloadable.</summary>
    public const int ModelNotAvailable = 3;
    /// <summary>Ctrl+C (128 + SIGINT, the shell convention).</summary>
    public const int Cancelled = 130;
}
