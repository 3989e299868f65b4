using Beagle.MLNet.Internal;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Beagle.MLNet;

/// <summary>
/// A fitted Beagle generator: adds Completion, NewTokens, AcceptanceLength, TokensPerSecond, Speculative, DraftRounds
/// and AcceptedDraftTokens (see <see cref="BeagleColumns"/>) to every row, computed
/// lazily as a cursor reaches the row. Internally a chain of standard, savable ML.NET transforms (copy the prompt
/// column to a private name, the Beagle CustomMapping, drop the private column), so it composes with other transforms
/// and saves inside any pipeline; the model state travels in the zip through <see cref="BeagleModel.Save"/>.
/// Dispose it (or let the process end) to stop its engine thread and free the model.
/// </summary>
public sealed class BeagleTransformer : ITransformer, IDisposable
{
    readonly ITransformer _inner;
    internal BeagleRuntime Runtime { get; }

    internal BeagleTransformer(ITransformer inner, BeagleRuntime runtime) { _inner = inner; Runtime = runtime; }

    /// <summary>The prompt column.</summary>
    public string InputColumnName => Runtime.Settings.InputColumnName;
    /// <summary>Fingerprint of the target the transformer decodes with.</summary>
    public string TargetFingerprint => Runtime.Target.Fingerprint;
    /// <summary>
    /// Whether a draft is loaded (decoding uses it unless UseDraft is false). A configuration, not a measurement:
    /// whether a row was decoded speculatively is its <see cref="BeagleColumns.Speculative"/> column.
    /// </summary>
    public bool HasDraft => Runtime.Settings.HasDraft;

    public bool IsRowToRowMapper => _inner.IsRowToRowMapper;

    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        SchemaChecks.CheckPrompt(inputSchema, InputColumnName);
        return _inner.GetOutputSchema(inputSchema);
    }

    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema)
    {
        SchemaChecks.CheckPrompt(inputSchema, InputColumnName);
        return _inner.GetRowToRowMapper(inputSchema);
    }

    public IDataView Transform(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        SchemaChecks.CheckPrompt(input.Schema, InputColumnName);
        return _inner.Transform(input);
    }

    /// <summary>Saves the inner chain of standard transforms; the model itself is added by <see cref="BeagleModel.Save"/>.</summary>
    void ICanSaveModel.Save(ModelSaveContext ctx) => _inner.Save(ctx);

    public void Dispose() => Runtime.Dispose();
}

internal static class SchemaChecks
{
    public static void CheckPrompt(DataViewSchema schema, string column) => CheckText(schema, column, "prompt");

    public static void CheckText(DataViewSchema schema, string column, string role)
    {
        ArgumentNullException.ThrowIfNull(schema);
        var c = schema.GetColumnOrNull(column);
        if (c is null)
            throw new ArgumentException($"the input has no {role} column '{column}' (it has: {string.Join(", ", schema.Where(x => !x.IsHidden).Select(x => x.Name))}); set the column name in the Beagle options or produce it upstream", "inputSchema");
        if (c.Value.Type is not TextDataViewType)
            throw new ArgumentException($"the {role} column '{column}' must be text (String), but it is {c.Value.Type}; convert it upstream", "inputSchema");
    }

    public static void CheckText(SchemaShape shape, string column, string role)
    {
        ArgumentNullException.ThrowIfNull(shape);
        var c = shape.LastOrDefault(x => x.Name == column);
        if (c.Name is null)
            throw new ArgumentException($"the input has no {role} column '{column}' (it has: {string.Join(", ", shape.Select(x => x.Name))}); set the column name in the Beagle options or produce it upstream", "inputSchema");
        if (c.Kind != SchemaShape.Column.VectorKind.Scalar || c.ItemType is not TextDataViewType)
            throw new ArgumentException($"the {role} column '{column}' must be a scalar text (String) column, but it is {(c.Kind == SchemaShape.Column.VectorKind.Scalar ? "" : c.Kind + " of ")}{c.ItemType}; convert it upstream", "inputSchema");
    }
}
