using Beagle.Checkpoints;
using Beagle.Decoding;
using Beagle.Drafting;
using Beagle.Models;
using Beagle.Tokenization;

namespace Beagle.Runtime;

/// <summary>
/// What a face asks to run: a target (known name or path), its tokenizer, a draft, where to run, and how the tree
/// budget is chosen. Every face (CLI, Semantic Kernel, ML.NET, hosting, the trainer, the samples) fills one of these and
/// hands it to <see cref="ModelLoader"/>; face option types only translate their settings into it.
/// </summary>
public sealed record ModelSpec
{
    /// <summary>
    /// A known model (<see cref="DefaultModels"/>: stories5M, the default and bundled, or stories260K), a llama2.c
    /// checkpoint (.bin) or a Hugging Face model folder (config.json + safetensors).
    /// </summary>
    public string Target { get; init; } = DefaultModels.Default;
    /// <summary>Tokenizer file or folder; null = the known model's, or the one next to the target (see <see cref="TargetLoader"/>).</summary>
    public string? Tokenizer { get; init; }
    /// <summary>Draft checkpoint folder (draft.json + draft.safetensors); null = the known model's bundled draft (see <see cref="UseBundledDraft"/>) or none.</summary>
    public string? Draft { get; init; }
    /// <summary>With a known target and no <see cref="Draft"/>: load its bundled Beagle draft (default). False = plain decoding.</summary>
    public bool UseBundledDraft { get; init; } = true;
    /// <summary>Skip the draft entirely, even a given one (plain decoding).</summary>
    public bool NoDraft { get; init; }
    /// <summary>
    /// A draft that needs no training: a smaller language model with the target's tokenizer (a llama2.c .bin file, a
    /// Hugging Face folder or a known name) drafting for the target. Excludes <see cref="Draft"/> and <see cref="NGram"/>.
    /// </summary>
    public string? DraftModel { get; init; }
    /// <summary>Prompt lookup (n-gram) drafting with these settings; null = off. Excludes <see cref="Draft"/> and <see cref="DraftModel"/>.</summary>
    public Beagle.Drafting.NGram.NGramOptions? NGram { get; init; }
    /// <summary>"auto" (CUDA when available), "cpu" or "cuda[:N]".</summary>
    public string Device { get; init; } = "auto";
    /// <summary>libtorch intra-op threads, set on the loading thread; null = leave as is.</summary>
    public int? Threads { get; init; }
    /// <summary>The tree budget asked for: named fields win, the rest comes from calibration or the default (<see cref="TreeBudgetOptions"/>).</summary>
    public TreeBudgetOptions TreeBudget { get; init; } = TreeBudgetOptions.None;
    /// <summary>
    /// Measure the budget for this machine, target and draft (seconds, once; cached in <see cref="TreeBudgetCacheFile"/>)
    /// when <see cref="TreeBudget"/> leaves something open. Off: the built-in default fills the open fields.
    /// </summary>
    public bool Calibrate { get; init; }
    /// <summary>Where calibrated budgets are cached; null = <see cref="BeaglePaths.TreeBudgetCacheFile"/>.</summary>
    public string? TreeBudgetCacheFile { get; init; }

    /// <summary>Checks what can be checked without touching the disk; messages name the property.</summary>
    public ModelSpec Validate(TreeBudgetSettingNames? budgetNames = null)
    {
        if (string.IsNullOrWhiteSpace(Target)) throw new ArgumentException("Target is required: a known model name (stories5M, stories260K), a llama2.c .bin file or a Hugging Face folder", nameof(Target));
        if (!IsDeviceName(Device)) throw new ArgumentException($"Device must be auto, cpu or cuda[:N], got '{Device}'", nameof(Device));
        if (Threads is { } t && t < 1) throw new ArgumentOutOfRangeException(nameof(Threads), t, "threads must be >= 1");
        if (TrainingFreeDrafts.Problem(DraftModel, NGram is not null, Draft, checkFiles: false) is { } problem) throw new ArgumentException(problem, nameof(DraftModel));
        NGram?.Validate();
        TreeBudget.Validate(budgetNames);
        return this;
    }

    /// <summary>Whether <paramref name="device"/> is a device name <see cref="DeviceSelector"/> accepts (availability is checked at load).</summary>
    public static bool IsDeviceName(string? device)
    {
        var d = (device ?? "").Trim().ToLowerInvariant();
        return d is "auto" or "cpu" or "cuda" || (d.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(d[5..], out var n) && n >= 0);
    }
}

/// <summary>The files a <see cref="ModelSpec"/> names, after known names are resolved.</summary>
/// <param name="Target">The llama2.c file or Hugging Face folder.</param>
/// <param name="Tokenizer">The tokenizer, or null: the loader finds it next to the target.</param>
/// <param name="Draft">The draft folder to load, or null: plain decoding.</param>
/// <param name="KnownName">The known model's name when the spec named one.</param>
/// <param name="BundledDraftMissing">A known model whose bundled draft was asked for but is not next to the program.</param>
public sealed record ResolvedModel(string Target, string? Tokenizer, string? Draft, string? KnownName, bool BundledDraftMissing);

/// <summary>
/// The composition root: the one place a target, its tokenizer, a draft, the device and the tree-budget policy are put
/// together. Faces translate their options into a <see cref="ModelSpec"/> and call <c>Load</c> (or its parts:
/// <see cref="Resolve"/>, <c>LoadTarget</c>, <c>LoadDraft</c>, <see cref="ApplyTreeBudget"/>).
/// Loading runs on the calling thread, which then owns the TorchSharp state (see architecture.md, "Threading").
/// </summary>
public static class ModelLoader
{
    /// <summary>
    /// Known names become their files (stories260K may download once, see <see cref="ModelStore"/>); an explicit
    /// tokenizer wins; the draft is the given one, else the known model's bundled one when asked for.
    /// </summary>
    /// <exception cref="ModelNotAvailableException">A known model's files are missing or damaged.</exception>
    public static ResolvedModel Resolve(ModelSpec spec, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(spec);
        spec.Validate();
        string target = spec.Target; string? tokenizer = spec.Tokenizer; string? known = null;
        if (DefaultModels.IsKnownName(spec.Target))
        {
            var m = DefaultModels.ResolveAsync(spec.Target, cancellationToken: cancellationToken).GetAwaiter().GetResult();
            (target, tokenizer, known) = (m.Model, tokenizer ?? m.Tokenizer, m.Name);
        }
        string? draft = null; bool missing = false;
        if (!spec.NoDraft && spec.DraftModel is null && spec.NGram is null)   // a training-free draft replaces the bundled one
        {
            draft = spec.Draft;
            if (draft is null && spec.UseBundledDraft && known is not null)
            {
                draft = DefaultModels.BundledDraft(known);
                missing = draft is null;
            }
        }
        return new ResolvedModel(target, tokenizer, draft, known, missing);
    }

    /// <summary>Loads the spec's target and tokenizer (llama2.c file or Hugging Face folder) on its device. The caller owns the result.</summary>
    public static LoadedTarget LoadTarget(ModelSpec spec, CancellationToken cancellationToken = default) =>
        LoadTarget(spec, Resolve(spec, cancellationToken));

    /// <summary>
    /// Test hook: called with the target's path at every target load in this execution context (it flows into threads
    /// started from it, such as an engine's worker), so a test can count the loads its own calls cause.
    /// </summary>
    internal static readonly AsyncLocal<Action<string>?> OnTargetLoad = new();

    /// <summary>Loads the target of an already resolved spec (<see cref="Resolve"/>). The caller owns the result.</summary>
    public static LoadedTarget LoadTarget(ModelSpec spec, ResolvedModel files)
    {
        OnTargetLoad.Value?.Invoke(files.Target);
        if (spec.Threads is { } t) TorchSharp.torch.set_num_threads(t);
        return TargetLoader.Load(files.Target, files.Tokenizer, DeviceSelector.Resolve(spec.Device));
    }

    /// <summary>Loads a draft folder for <paramref name="target"/>; one trained for another target is refused (both fingerprints in the message).</summary>
    public static IDraftModel LoadDraft(string draftDir, LlamaModel target) => DraftCheckpoint.Load(draftDir, target);

    /// <summary>Target, tokenizer and draft (if any) of <paramref name="spec"/>, ready for a <see cref="Generator"/> or <see cref="BeagleEngine"/>.</summary>
    public static EngineModels Load(ModelSpec spec, CancellationToken cancellationToken = default) => Load(spec, Resolve(spec, cancellationToken));

    /// <summary>Target, tokenizer and draft of an already resolved spec (<see cref="Resolve"/>).</summary>
    public static EngineModels Load(ModelSpec spec, ResolvedModel files)
    {
        var target = LoadTarget(spec, files);
        try { return new EngineModels(target.Model, target.Tokenizer, LoadDraft(spec, files, target)); }
        catch { target.Dispose(); throw; }
    }

    /// <summary>
    /// The draft <paramref name="spec"/> asks for, for its loaded <paramref name="target"/>: the resolved draft folder
    /// (<see cref="InvalidDataException"/> when it does not fit the target), else a draft that needs no training
    /// (<see cref="ArgumentException"/> when the draft model does not fit), else none. The caller owns the result.
    /// </summary>
    public static IDraftModel? LoadDraft(ModelSpec spec, ResolvedModel files, LoadedTarget target) =>
        files.Draft is not null ? LoadDraft(files.Draft, target.Model)
        : spec.NoDraft ? null
        : TrainingFreeDrafts.Create(spec.DraftModel, spec.NGram is not null, target.Model, target.Tokenizer, spec.NGram);

    /// <summary>
    /// A generator over <paramref name="models"/> with the spec's tree budget applied for greedy requests (and, when
    /// <paramref name="sampling"/> is given and not greedy, for sampled requests like it).
    /// </summary>
    public static Generator CreateGenerator(EngineModels models, ModelSpec spec, SamplingOptions? sampling = null, Action<string>? log = null,
        TreeBudgetSettingNames? budgetNames = null)
    {
        var gen = new Generator(models.Target, models.Tokenizer, models.Draft);
        ApplyTreeBudget(gen, spec.TreeBudget, spec.Calibrate, spec.TreeBudgetCacheFile, sampling, log, budgetNames);
        return gen;
    }

    /// <summary>
    /// The tree budget a draft decodes with: <paramref name="budget"/>'s named fields over the basis — the calibrated
    /// budget when <paramref name="calibrate"/> and something is left open, else <see cref="Beagle.Decoding.TreeBudget.Default"/>
    /// (see <see cref="TreeBudgetOptions"/>). Also returns the calibration, if one ran (null otherwise).
    /// </summary>
    /// <param name="sampling">Sampled decoding is calibrated with its own setting (acceptance under sampling differs); null or greedy: greedy.</param>
    /// <exception cref="ArgumentException">The named fields cannot hold together with the basis; the message names them.</exception>
    public static (TreeBudget Budget, CalibratedBudget? Calibration) TreeBudgetFor(LlamaModel target, ITokenizer tokenizer, IDraftModel draft,
        TreeBudgetOptions budget, bool calibrate, string? cacheFile = null, SamplingOptions? sampling = null, Action<string>? log = null,
        TreeBudgetSettingNames? budgetNames = null)
    {
        budget.Validate(budgetNames);
        if (!calibrate || budget.IsComplete) return (budget.Over(Beagle.Decoding.TreeBudget.Default, budgetNames), null);
        var cal = TreeBudgetCalibrator.GetOrMeasure(target, tokenizer, draft, TreeBudgetCalibrator.DraftIdentity(draft), cacheFile ?? BeaglePaths.TreeBudgetCacheFile,
            log: log, sampling: sampling is null || sampling.IsGreedy ? null : sampling with { Seed = 1 });
        return (budget.Over(cal.Budget, budgetNames, "the calibrated budget"), cal);
    }

    /// <summary>
    /// Sets <paramref name="gen"/>'s default budget for greedy requests (or, with a non-greedy <paramref name="sampling"/>,
    /// for sampled ones) from <see cref="TreeBudgetFor"/>. Where calibration found that drafting does not pay, requests
    /// that leave the budget open decode plainly — unless <paramref name="budget"/> names something: a budget the user
    /// asked for is honoured. No draft: nothing to do.
    /// </summary>
    public static void ApplyTreeBudget(Generator gen, TreeBudgetOptions budget, bool calibrate, string? cacheFile = null, SamplingOptions? sampling = null,
        Action<string>? log = null, TreeBudgetSettingNames? budgetNames = null)
    {
        if (gen.Draft is null) { budget.Validate(budgetNames); return; }
        var (b, cal) = TreeBudgetFor(gen.Target, gen.Tokenizer, gen.Draft, budget, calibrate, cacheFile, sampling, log, budgetNames);
        bool pays = cal is null || !cal.UsePlain || !budget.IsEmpty;
        if (sampling is null || sampling.IsGreedy) { gen.DefaultTreeBudget = b; gen.SpeculationPays = pays; }
        else { gen.DefaultSamplingTreeBudget = b; gen.SamplingSpeculationPays = pays; }
    }
}
