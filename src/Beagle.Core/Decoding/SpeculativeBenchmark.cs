using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tokenization;

namespace Beagle.Decoding;

/// <summary>One row of a benchmark: plain decoding (no draft) or a draft with its tree budget.</summary>
public sealed record BenchMethod(string Name, string? DraftPath, IDraftModel? Draft, SpeculativeOptions? Speculative);

/// <summary>Measured figures of one method (JSON names as `beagle bench --json` writes them).</summary>
public sealed record BenchMethodResult(
    [property: JsonPropertyName("name")] string Name,
    [property: JsonPropertyName("draft")] string? Draft,
    [property: JsonPropertyName("tokens_per_second")] double TokensPerSecond,
    [property: JsonPropertyName("speedup")] double Speedup,
    [property: JsonPropertyName("acceptance_length")] double AcceptanceLength,
    [property: JsonPropertyName("peak_memory_mb")] double PeakMemoryMb,
    [property: JsonPropertyName("acceptance_by_depth")] double[] AcceptanceByDepth,
    [property: JsonPropertyName("tree")] string? Tree,
    [property: JsonPropertyName("runs_tokens_per_second")] double[] RunsTokensPerSecond,
    [property: JsonPropertyName("draft_bytes")] long DraftBytes = 0);

public sealed record BenchResult(
    [property: JsonPropertyName("machine")] string Machine,
    [property: JsonPropertyName("threads")] int Threads,
    [property: JsonPropertyName("max_new_tokens")] int MaxNewTokens,
    [property: JsonPropertyName("prompts")] int Prompts,
    [property: JsonPropertyName("runs")] int Runs,
    [property: JsonPropertyName("methods")] IReadOnlyList<BenchMethodResult> Methods,
    [property: JsonPropertyName("greedy_outputs_identical")] bool GreedyOutputsIdentical,
    [property: JsonPropertyName("truncated_prompts")] int TruncatedPrompts = 0,
    [property: JsonPropertyName("sampling")] string Sampling = "greedy",
    [property: JsonPropertyName("peak_memory_per_method")] bool PeakMemoryPerMethod = true)
{
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };
    public string ToJson() => JsonSerializer.Serialize(this, Indented);
    public static BenchResult Parse(string json) =>
        JsonSerializer.Deserialize<BenchResult>(json) ?? throw new InvalidDataException("bench result: the JSON is null");
    public static BenchResult Load(string path) => Parse(File.ReadAllText(path));
}

/// <summary>
/// Plain decoding and each draft on the same prompts, interleaved prompt by prompt in one process, so that machine
/// noise hits every method alike; the order of the methods rotates from one generation of a prompt to the next, so no
/// method always runs first (right after another method's allocations and cache traffic). Tokens/s per run is total new
/// tokens over total generation wall time, prefill included (each generation's <see cref="GenerationStats.ElapsedSeconds"/>:
/// the same definition as <see cref="GenerationStats.TokensPerSecond"/>); the reported figure is the median over runs,
/// and the speedup is the ratio of medians against plain decoding in the same run. The acceptance length counts only
/// tokens that reached the output (<see cref="GenerationStats.RoundTokens"/>). Memory per method: the process's peak
/// resident set (reset before each generation where the OS allows it) and the exact bytes the draft adds
/// (<see cref="IDraftModel.WeightBytes"/> plus the largest <see cref="GenerationStats.DraftStateBytes"/>).
/// Greedy outputs are compared token for token.
/// </summary>
public static class SpeculativeBenchmark
{
    /// <summary>How long every method decodes untimed before the first measured run, unless the caller says otherwise.</summary>
    public static TimeSpan DefaultWarmUp { get; } = TimeSpan.FromSeconds(2);

    /// <param name="warmUp">
    /// Untimed decoding before the measured runs (default <see cref="DefaultWarmUp"/>; every method runs at least once).
    /// .NET compiles hot methods to optimised code only after they have run for a while: with one short warm-up
    /// generation the first two of five runs were 20-40 % slower than the rest (per-run tokens/s in the JSON), and a
    /// median of five with two cold runs ranked methods by how warm the process was (measured: 1.18x vs 1.45x for the
    /// same setting, docs/benchmarks.md).
    /// </param>
    /// <param name="warn">
    /// Told once per prompt that does not leave room for <paramref name="maxNewTokens"/> in the model's context (Spec-Bench
    /// has such prompts for small models); that prompt is cut from the left (see <see cref="FitToContext"/>) and counted
    /// in <see cref="BenchResult.TruncatedPrompts"/>, so one long prompt never stops a benchmark.
    /// </param>
    /// <param name="clock">The clock the warm-up is timed by (default: the system's); tests pass a manual one.</param>
    public static BenchResult Run(LlamaModel target, ITokenizer tokenizer, IReadOnlyList<BenchMethod> methods, IReadOnlyList<string> prompts,
        int maxNewTokens, int runs, SamplingOptions? sampling = null, Action<string>? progress = null, CancellationToken cancellationToken = default,
        TimeSpan? warmUp = null, Action<string>? warn = null, TimeProvider? clock = null)
        => Run(target, tokenizer, methods, prompts, maxNewTokens, runs, sampling, progress, cancellationToken, warmUp, warn, clock, ResetPeakMemory);

    /// <param name="resetPeakMemory">Resets the process's peak memory; returns null, or why it could not (a test seam).</param>
    internal static BenchResult Run(LlamaModel target, ITokenizer tokenizer, IReadOnlyList<BenchMethod> methods, IReadOnlyList<string> prompts,
        int maxNewTokens, int runs, SamplingOptions? sampling, Action<string>? progress, CancellationToken cancellationToken,
        TimeSpan? warmUp, Action<string>? warn, TimeProvider? clock, Func<string?> resetPeakMemory)
    {
        clock ??= TimeProvider.System;
        var warmUpTime = warmUp ?? DefaultWarmUp;
        if (warmUpTime < TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(warmUp), "the warm-up cannot be negative");
        if (methods.Count == 0 || methods[0].Draft is not null) throw new ArgumentException("the first method must be plain decoding (no draft)");
        if (prompts.Count == 0) throw new ArgumentException("no prompts to benchmark");
        if (runs < 1) throw new ArgumentOutOfRangeException(nameof(runs), "runs must be >= 1");
        sampling ??= SamplingOptions.Greedy;
        var gens = methods.Select(m => new Generator(target, tokenizer, m.Draft)).ToArray();
        int ctx = target.Config.MaxSeqLen, truncated = 0;
        var ids = new int[prompts.Count][];
        for (int p = 0; p < prompts.Count; p++)
        {
            var full = tokenizer.Encode(prompts[p], tokenizer.BosId >= 0);
            ids[p] = FitToContext(full, ctx, maxNewTokens, tokenizer.BosId);
            if (ids[p].Length == full.Length) continue;
            truncated++;
            warn?.Invoke($"prompt {p + 1} (\"{FirstWords(prompts[p])}\"): its {full.Length} tokens leave no room for {maxNewTokens} new " +
                $"tokens in the model's context of {ctx}; cut from the left to {ids[p].Length} tokens");
        }
        int M = methods.Count;
        var tokens = new long[runs, M]; var seconds = new double[runs, M];
        var roundTokens = new long[M]; var forwards = new long[M]; var peak = new double[M]; var stateBytes = new long[M];
        var depthHits = new double[M][]; var rounds = new long[M];
        var outputs = new int[M][][];
        for (int m = 0; m < M; m++) outputs[m] = new int[ids.Length][];

        // Warm-up (JIT tiers, allocator, caches): the prompts in turn, every method on each, until the time is up.
        long warmStart = clock.GetTimestamp();
        for (int p = 0; p == 0 || clock.GetElapsedTime(warmStart) < warmUpTime; p++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            progress?.Invoke($"warming up ({warmUpTime.TotalSeconds:0.#} s): pass {p + 1}");
            for (int m = 0; m < M; m++) foreach (var _ in gens[m].Generate(ids[p % ids.Length], Options(methods[m], sampling, maxNewTokens), null, cancellationToken)) { }
        }

        // Peak memory per method needs the process's peak reset before each generation; where that fails, the figure
        // is the process's peak so far (it only grows), which the result says instead of passing it off as the method's.
        bool perMethodPeak = true;
        for (int r = 0; r < runs; r++)
            for (int p = 0; p < ids.Length; p++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                progress?.Invoke($"run {r + 1}/{runs}, prompt {p + 1}/{ids.Length}");
                foreach (int m in MethodOrder(M, r * ids.Length + p))
                {
                    if (perMethodPeak && resetPeakMemory() is { } why)
                    {
                        perMethodPeak = false;
                        warn?.Invoke($"peak memory: the process's peak cannot be reset here ({why}); peak_memory_mb is the process's peak so far, not each method's own (draft_bytes is exact either way)");
                    }
                    var stats = new GenerationStats();
                    var list = new List<int>(maxNewTokens);
                    foreach (var c in gens[m].Generate(ids[p], Options(methods[m], sampling, maxNewTokens), stats, cancellationToken)) list.AddRange(c.TokenIds);
                    seconds[r, m] += stats.ElapsedSeconds;
                    tokens[r, m] += stats.NewTokens;
                    peak[m] = Math.Max(peak[m], PeakMemoryMb());
                    stateBytes[m] = Math.Max(stateBytes[m], stats.DraftStateBytes);
                    roundTokens[m] += stats.RoundTokens; forwards[m] += stats.TargetForwards;
                    if (stats.AcceptedAtDepth.Length > 0)
                    {
                        depthHits[m] ??= new double[stats.AcceptedAtDepth.Length];
                        for (int d = 0; d < Math.Min(depthHits[m].Length, stats.AcceptedAtDepth.Length); d++) depthHits[m][d] += stats.AcceptedAtDepth[d];
                        rounds[m] += stats.DraftRounds;
                    }
                    if (r == 0) outputs[m][p] = list.ToArray();
                }
            }

        var tps = new double[M][];
        for (int m = 0; m < M; m++) tps[m] = Enumerable.Range(0, runs).Select(r => tokens[r, m] / seconds[r, m]).ToArray();
        double plainMedian = Median(tps[0]);
        bool identical = true;
        if (sampling.IsGreedy)
            for (int m = 1; m < M; m++) for (int p = 0; p < ids.Length; p++) identical &= outputs[m][p].AsSpan().SequenceEqual(outputs[0][p]);
        var results = new List<BenchMethodResult>();
        for (int m = 0; m < M; m++)
        {
            var med = Median(tps[m]);
            var byDepth = depthHits[m] is { } h && rounds[m] > 0 ? h.Select(x => Math.Round(x / rounds[m], 4)).ToArray() : [];
            var b = methods[m].Speculative is { } s && methods[m].Draft is not null ? TreeBudget.Resolve(s, gens[m].DefaultTreeBudget) : (TreeBudget?)null;
            long draftBytes = methods[m].Draft is { } d ? d.WeightBytes + stateBytes[m] : 0;   // after the runs: session copies are built
            results.Add(new BenchMethodResult(methods[m].Name, methods[m].DraftPath, Math.Round(med, 1), Math.Round(med / plainMedian, 3),
                Math.Round(forwards[m] == 0 ? 1 : (double)roundTokens[m] / forwards[m], 3), Math.Round(peak[m], 1), byDepth,
                b?.ToString(), tps[m].Select(x => Math.Round(x, 1)).ToArray(), draftBytes));
        }
        return new BenchResult(MachineName(), TorchSharp.torch.get_num_threads(), maxNewTokens, ids.Length, runs, results, identical, truncated,
            sampling.IsGreedy ? "greedy" : FormattableString.Invariant($"temperature {sampling.Temperature}, top-k {sampling.TopK}, top-p {sampling.TopP}, seed {sampling.Seed}"),
            perMethodPeak);
    }

    /// <summary>
    /// The order in which the methods decode at generation <paramref name="turn"/> (run × prompts + prompt): a rotation
    /// by one method per turn, so over the runs every method goes first equally often and none always follows the same one.
    /// </summary>
    internal static int[] MethodOrder(int methods, int turn) => Enumerable.Range(0, methods).Select(i => (turn + i) % methods).ToArray();

    /// <summary>
    /// <paramref name="promptIds"/> as is when it leaves room for <paramref name="maxNewTokens"/> in a context of
    /// <paramref name="contextLength"/> positions, else its last tokens (BOS kept in front when it starts with it:
    /// the model always saw text after BOS). At least one token besides BOS is kept, whatever the token budget.
    /// </summary>
    public static int[] FitToContext(int[] promptIds, int contextLength, int maxNewTokens, int bosId = -1)
    {
        bool bos = bosId >= 0 && promptIds.Length > 0 && promptIds[0] == bosId;
        int keep = Math.Max(contextLength - Math.Max(maxNewTokens, 1), bos ? 2 : 1);
        if (promptIds.Length <= keep) return promptIds;
        return bos ? [promptIds[0], .. promptIds.AsSpan(promptIds.Length - (keep - 1))] : promptIds[^keep..];
    }

    /// <summary>The first words of a prompt, to name it in a message.</summary>
    static string FirstWords(string prompt, int words = 6)
    {
        var w = prompt.Split((char[])[' ', '\n', '\r', '\t'], StringSplitOptions.RemoveEmptyEntries);
        return string.Join(' ', w.Take(words)) + (w.Length > words ? " ..." : "");
    }

    static GenerationOptions Options(BenchMethod m, SamplingOptions sampling, int maxNewTokens) =>
        new() { MaxNewTokens = maxNewTokens, Sampling = sampling, Speculative = m.Draft is null ? null : m.Speculative ?? new SpeculativeOptions() };

    /// <summary>Median (mean of the middle two for an even count; 0 for none): what every benchmark reports of its runs.</summary>
    public static double Median(IEnumerable<double> values)
    {
        var s = values.OrderBy(x => x).ToArray();
        return s.Length == 0 ? 0 : s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    /// <summary>
    /// Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM), so each method's own peak is seen.
    /// Returns null when it worked, else why not (no such file elsewhere, or not permitted in some containers).
    /// </summary>
    static string? ResetPeakMemory()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); return null; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return e.Message; }
    }

    /// <summary>Peak resident memory of the process in MB (VmHWM on Linux; the working-set peak elsewhere).</summary>
    public static double PeakMemoryMb()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0;
        }
        catch (IOException) { }
        return Process.GetCurrentProcess().PeakWorkingSet64 / (1024.0 * 1024.0);
    }

    public static string MachineName()
    {
        string cpu = Environment.OSVersion.ToString();
        try { cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name"))?.Split(':', 2)[1].Trim() ?? cpu; } catch (IOException) { }
        return $"{cpu}, {Environment.ProcessorCount} cores";
    }

    /// <summary>
    /// Prompts from a file: one per line, or JSON lines — Spec-Bench / MT-bench (<c>{"turns": [...]}</c>, first turn),
    /// or an object with "prompt" or "text".
    /// </summary>
    public static IReadOnlyList<string> LoadPrompts(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"prompt file not found: {path}", path);
        var list = new List<string>();
        int lineNo = 0;
        foreach (var raw in File.ReadLines(path))
        {
            lineNo++;
            var line = raw.Trim();
            if (line.Length == 0) continue;
            if (line.StartsWith('{'))
            {
                JsonDocument doc;
                try { doc = JsonDocument.Parse(line); }
                catch (JsonException e) { throw new InvalidDataException($"{path}:{lineNo}: not a JSON object ({e.Message})", e); }
                using var _ = doc;
                var root = doc.RootElement;
                string? text;
                if (root.TryGetProperty("turns", out var turns) && turns.ValueKind == JsonValueKind.Array && turns.GetArrayLength() > 0) text = turns[0].GetString();
                else if (root.TryGetProperty("prompt", out var pr)) text = pr.GetString();
                else if (root.TryGetProperty("text", out var tx)) text = tx.GetString();
                else throw new InvalidDataException($"{path}:{lineNo}: a JSON line needs \"turns\", \"prompt\" or \"text\"");
                if (!string.IsNullOrWhiteSpace(text)) list.Add(text);   // an empty prompt has nothing to continue (and no tokens without BOS)
            }
            else list.Add(line);
        }
        if (list.Count == 0) throw new InvalidDataException($"{path}: no prompts");
        return list;
    }
}
