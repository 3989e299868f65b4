using Beagle.Drafting;
using Beagle.Models;

namespace Beagle.Decoding;

internal static class SpeculativeStrategyFactory
{
    public static IDecodeStrategy Create(LlamaModel target, IDraftModel draft, KvCache cache, Sampler sampler, GenerationStats stats, SpeculativeOptions options)
        => throw new NotSupportedException("speculative decoding is not implemented yet (issue #3)");
}
