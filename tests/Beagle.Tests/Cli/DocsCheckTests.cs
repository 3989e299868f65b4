using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Cli;

/// <summary>
/// scripts/check-docs.sh against this build of the CLI: the docs' links and repository paths exist, they carry no
/// development paths or history, the README lists every command, every --help renders, and the README's generate
/// commands run (with --json giving one JSON document).
/// </summary>
public class DocsCheckTests
{
    [Fact]
    public void The_docs_match_the_product()
    {
        var repo = new DirectoryInfo(AppContext.BaseDirectory);
        while (repo is not null && !File.Exists(Path.Combine(repo.FullName, "scripts", "check-docs.sh"))) repo = repo.Parent;
        Assert.NotNull(repo);
        var r = ChildProcess.Run("bash", ["scripts/check-docs.sh"],
            new Dictionary<string, string?> { ["BEAGLE_CLI"] = Path.Combine(AppContext.BaseDirectory, "beagle.dll") },
            workingDirectory: repo.FullName, timeout: TimeSpan.FromMinutes(3));
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("check-docs: ok", r.Stdout);
    }
}
