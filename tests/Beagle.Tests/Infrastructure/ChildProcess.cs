using System.Diagnostics;

namespace Beagle.Tests.Infrastructure;

/// <summary>What a program printed and returned, run as a child process (its stdout and stderr kept apart).</summary>
public sealed record ProcessResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}";
}

/// <summary>
/// Runs .NET programs the way a user does (`dotnet program.dll args`), with a clean environment for the variables the
/// product reads, so that tests see what a fresh machine sees.
/// </summary>
public static class ChildProcess
{
    /// <summary>The dotnet host running the tests (the SDK sets DOTNET_HOST_PATH for its children), else `dotnet`.</summary>
    static string DotnetHost =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host
        : Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";

    /// <summary>`beagle args...` from the test's output folder (the CLI project is referenced, so beagle.dll is there).</summary>
    public static ProcessResult Beagle(params string[] args) => Dotnet(Path.Combine(AppContext.BaseDirectory, "beagle.dll"), args);

    /// <summary>`dotnet <paramref name="dll"/> args...` (see <see cref="Run"/>); the working folder defaults to the dll's.</summary>
    public static ProcessResult Dotnet(string dll, IEnumerable<string> args, IReadOnlyDictionary<string, string?>? environment = null,
        string? workingDirectory = null, TimeSpan? timeout = null) =>
        Run(DotnetHost, [dll, .. args], environment, workingDirectory ?? Path.GetDirectoryName(dll)!, timeout);

    /// <param name="environment">Variables to set (null value: removed). BEAGLE_MODELS and BEAGLE_DEBUG are always removed
    /// unless given here; OMP_WAIT_POLICY=PASSIVE is set so a child never spins against the test run.</param>
    public static ProcessResult Run(string fileName, IEnumerable<string> args, IReadOnlyDictionary<string, string?>? environment = null,
        string? workingDirectory = null, TimeSpan? timeout = null)
    {
        var psi = StartInfo(fileName, args, environment, workingDirectory);
        var limit = timeout ?? TimeSpan.FromMinutes(2);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {psi.FileName}");
        p.StandardInput.Close();   // a program that reads input (a sample's prompts) sees its end at once
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(limit))
        {
            try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            throw new TimeoutException($"{fileName} {string.Join(' ', args)} did not finish within {limit}");
        }
        p.WaitForExit();
        return new ProcessResult(p.ExitCode, stdout.GetAwaiter().GetResult(), stderr.GetAwaiter().GetResult());
    }

    /// <summary>
    /// Starts `dotnet <paramref name="dll"/> args...` with the environment of <see cref="Run"/> and every stream redirected;
    /// standard input stays open (the caller writes to it or closes it). The caller waits for and disposes the process.
    /// </summary>
    public static Process StartDotnet(string dll, IEnumerable<string> args, IReadOnlyDictionary<string, string?>? environment = null, string? workingDirectory = null) =>
        Process.Start(StartInfo(DotnetHost, [dll, .. args], environment, workingDirectory ?? Path.GetDirectoryName(dll)!))
        ?? throw new InvalidOperationException($"could not start {dll}");

    /// <summary>Sends SIGTERM (what `docker stop` and systemd send) to a child process.</summary>
    public static void Terminate(Process process)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", ["-TERM", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]) { UseShellExecute = false })!;
        kill.WaitForExit();
    }

    static ProcessStartInfo StartInfo(string fileName, IEnumerable<string> args, IReadOnlyDictionary<string, string?>? environment, string? workingDirectory)
    {
        var psi = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment.Remove("BEAGLE_MODELS");
        psi.Environment.Remove("BEAGLE_DEBUG");
        psi.Environment["OMP_WAIT_POLICY"] = "PASSIVE";
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        foreach (var (k, v) in environment ?? new Dictionary<string, string?>())
            if (v is null) psi.Environment.Remove(k); else psi.Environment[k] = v;
        return psi;
    }
}
