using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tokenization;
using static TorchSharp.torch;

namespace Beagle.Training;

/// <summary>One training-memory benchmark setting (one fresh process each).</summary>
/// <param name="Arch">"beagle" (stage-2 simulation, detached steps unless FullBackprop) or "eagle2" (training-time test).</param>
/// <param name="SimSteps">Beagle: simulated steps s; EAGLE-2: unrolled TTT steps.</param>
public sealed record TrainBenchSettings(string Arch, int SimSteps, int Batch = 16, int SeqLen = 512, int Steps = 4, int WindowK = 5,
    bool FullBackprop = false, int Seed = 0);

/// <summary>Result of one setting, printed as one JSON line by the worker process.</summary>
public sealed record TrainBenchResult(string Arch, int SimSteps, int Batch, int SeqLen, int Steps, bool FullBackprop,
    double StepMs, double TokensPerSecond, double BaselineMemoryMb, double PeakMemoryMb, double StepMemoryMb, bool PeakReset)
{
    static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.Never };
    public string ToJson() => JsonSerializer.Serialize(this, Json);
    public static TrainBenchResult FromJson(string json) => JsonSerializer.Deserialize<TrainBenchResult>(json, Json)!;
}

/// <summary>
/// Training-memory benchmark (Beagle's claim: flat memory in the number of simulated steps; a self-attention
/// training-time test grows). <see cref="RunOne(LlamaModel, ITokenizer, TrainBenchSettings)"/> is the per-process worker:
/// the CLI re-invokes itself with a hidden sub-command per setting, so each measurement starts from a fresh heap.
/// Memory is the process's resident set from /proc/self/status: baseline VmRSS after the target, the batch's true
/// states, the draft and the optimiser exist (after <see cref="TrimNativeHeap"/>); the high-water mark VmHWM is reset
/// there (write "5" to /proc/self/clear_refs) and read after the steps. Step memory = peak - baseline.
/// RSS measures the allocator as well as the tensors: with glibc's default dynamic mmap threshold, freed large blocks
/// stay in the heap and their reuse depends on the order of allocations, which made Beagle's detached stage 2 look
/// like it grew with s. `beagle train-bench` therefore starts workers with MALLOC_MMAP_THRESHOLD_ fixed (see
/// docs/training.md), so that every large tensor is mapped on allocation and unmapped on free and RSS follows the live
/// tensors.
/// </summary>
public static class TrainBench
{
    public static TrainBenchResult RunOne(LlamaModel target, ITokenizer tokenizer, TrainBenchSettings s)
    {
        if (s.Steps < 1) throw new ArgumentOutOfRangeException(nameof(s), "at least one step");
        var options = new TrainingOptions
        {
            Architecture = s.Arch, OutputDir = Path.GetTempPath(), Generate = 1, WindowK = Math.Max(s.WindowK, s.SimSteps),
            SimSteps = s.SimSteps, FullBackprop = s.FullBackprop, EagleTttSteps = s.Arch == DraftConfig.Eagle2 ? s.SimSteps : 1,
            SeqLen = s.SeqLen, BatchSize = s.Batch, Seed = s.Seed,
        };
        // Random tokens are enough for memory and time: the work does not depend on the token values.
        manual_seed(s.Seed);
        var tokens = randint(3, target.Config.VocabSize, [s.Batch, s.SeqLen], dtype: ScalarType.Int64);
        var states = target.HiddenStates(tokens);                                                     // [B, T, D]
        using var draft = DraftCheckpoint.Create(DraftConfig.ForTarget(target.Config, s.Arch), target);
        var parameters = draft.parameters().Where(p => p.requires_grad).ToList();
        using var opt = new AdamW(parameters, lr: 1e-4, beta1: 0.9, beta2: 0.95);
        var trainer = DraftTrainer.Create(target, tokenizer, options);

        GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect();
        TrimNativeHeap();
        double baseline = ReadStatusMb("VmRSS");
        bool reset = ResetPeak();
        var sw = new Stopwatch(); int timed = 0;
        for (int i = 0; i < s.Steps; i++)
        {
            if (i == 1 || s.Steps == 1) sw.Start();   // the first step warms up allocators and kernels
            using var scope = NewDisposeScope();
            opt.zero_grad();
            trainer.BenchStep(draft, tokens, states, i, s.SimSteps, s.FullBackprop);
            opt.step();
            if (sw.IsRunning) timed++;
        }
        sw.Stop();
        double peak = ReadStatusMb("VmHWM");
        double stepMs = sw.Elapsed.TotalMilliseconds / Math.Max(1, timed);
        tokens.Dispose(); states.Dispose();
        return new TrainBenchResult(s.Arch, s.SimSteps, s.Batch, s.SeqLen, s.Steps, s.FullBackprop, stepMs,
            s.Batch * s.SeqLen / (stepMs / 1000.0), baseline, peak, peak - baseline, reset);
    }

    /// <summary>
    /// Returns the native heap's free memory to the OS (glibc malloc_trim), so that the baseline resident set counts live
    /// memory only and not blocks freed earlier (feature extraction, model loading) that glibc keeps for reuse. A no-op
    /// where glibc is absent.
    /// </summary>
    public static void TrimNativeHeap()
    {
        if (!OperatingSystem.IsLinux()) return;
        try { MallocTrim(0); }
        catch (DllNotFoundException) { }
        catch (EntryPointNotFoundException) { }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "malloc_trim")]
    static extern int MallocTrim(nuint pad);

    /// <summary>A field of /proc/self/status in MB (kB / 1024); NaN where /proc is unavailable.</summary>
    public static double ReadStatusMb(string field)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith(field + ":", StringComparison.Ordinal))
                    return long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0]) / 1024.0;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return double.NaN;
    }

    /// <summary>Resets the peak-RSS counter (Linux 4.0+: "5" into /proc/self/clear_refs). False if not possible.</summary>
    public static bool ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); return true; }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }
}
