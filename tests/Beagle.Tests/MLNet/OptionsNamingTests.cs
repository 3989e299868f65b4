// Both faces imported together, as an application that serves chat and runs ML.NET pipelines does.
using Beagle.MLNet;
using Beagle.SemanticKernel;
using Xunit;

namespace Beagle.Tests.MLNet;

public class OptionsNamingTests
{
    [Fact]
    public void BeagleModelOptions_names_one_type_so_code_importing_both_faces_compiles()
    {
        // With a second BeagleModelOptions in Beagle.MLNet this file did not compile (CS0104, ambiguous reference).
        var served = new BeagleModelOptions { TargetPath = "model.bin" };
        BeagleEstimatorOptions estimator = new BeagleGenerateOptions { TargetPath = "model.bin" };
        Assert.Equal(served.TargetPath, estimator.TargetPath);

        var named = typeof(BeagleModelOptions).Assembly.GetTypes().Concat(typeof(BeagleEstimatorOptions).Assembly.GetTypes())
            .Concat(typeof(Beagle.Hosting.Training.DraftTrainingService).Assembly.GetTypes())
            .Where(t => t.Name == nameof(BeagleModelOptions)).ToList();
        Assert.Equal([typeof(BeagleModelOptions)], named);
    }
}
