using Beagle.Drafting;
using Beagle.Models;

namespace Beagle.Decoding;

internal static class SpeculativeStrategyFactory
{
    public static IDecodeStrategy Create(LlamaModel target, IDraftModel draft, KvCache cache, Sampler sampler, GenerationStats stats, SpeculativeOptions options)
        => new SpeculativeStrategy(target, draft, cache, sampler, stats, TreeBudget.Resolve(options, TreeBudget.Default), options.ConcatDraftStates);
}
