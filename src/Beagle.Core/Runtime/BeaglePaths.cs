namespace Beagle.Runtime;

/// <summary>Where the product keeps its per-user files: one root, so that no component derives its path from another's.</summary>
public static class BeaglePaths
{
    /// <summary>$XDG_CACHE_HOME/beagle, or ~/.cache/beagle.</summary>
    public static string UserCacheDir
    {
        get
        {
            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            var root = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(root, "beagle");
        }
    }

    /// <summary>The calibrated tree budgets (<see cref="Decoding.TreeBudgetCalibrator"/>): <c>&lt;user cache&gt;/tree-budgets.json</c>.</summary>
    public static string TreeBudgetCacheFile => Path.Combine(UserCacheDir, "tree-budgets.json");

    /// <summary>The download cache of a model fetched by <see cref="ModelStore"/>: <c>&lt;user cache&gt;/models/&lt;name&gt;</c>.</summary>
    public static string ModelCacheDir(string name) => Path.Combine(UserCacheDir, "models", name);
}
