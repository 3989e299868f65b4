using Beagle.SemanticKernel;
using Microsoft.Extensions.Options;

namespace Beagle.Hosting;

/// <summary>Validates the bound options at host start, paths included; each failure names its setting (e.g. "Beagle:TargetPath").</summary>
internal sealed class BeagleModelOptionsValidator(string prefix) : IValidateOptions<BeagleModelOptions>
{
    public ValidateOptionsResult Validate(string? name, BeagleModelOptions options)
    {
        var problems = options.Problems(checkFiles: true, prefix);
        return problems.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(problems);
    }
}
