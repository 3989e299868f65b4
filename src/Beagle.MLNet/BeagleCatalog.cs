using Microsoft.ML;

namespace Beagle.MLNet;

/// <summary>Entry point in ML.NET style: <c>mlContext.Beagle().Generate(...)</c> / <c>.TrainDraft(...)</c>.</summary>
public static class BeagleMLContextExtensions
{
    public static BeagleCatalog Beagle(this MLContext mlContext)
    {
        ArgumentNullException.ThrowIfNull(mlContext);
        return new BeagleCatalog(mlContext);
    }
}

/// <summary>Beagle's estimators. Save and load the fitted pipelines with <see cref="BeagleModel"/>.</summary>
public sealed class BeagleCatalog
{
    readonly MLContext _ml;
    internal BeagleCatalog(MLContext ml) => _ml = ml;

    /// <summary>Completes the prompt column with the target, speculatively when a draft is given, plainly otherwise.</summary>
    public BeagleGenerateEstimator Generate(BeagleGenerateOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new BeagleGenerateEstimator(_ml, options);
    }

    /// <summary>Trains a Beagle or EAGLE-2 draft for the target on the text column; the fitted transformer decodes with it.</summary>
    public BeagleTrainDraftEstimator TrainDraft(BeagleTrainDraftOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new BeagleTrainDraftEstimator(_ml, options);
    }
}
