using System.Text.Json;
using Beagle.Runtime;

namespace Beagle.Server;

/// <summary>
/// A request the server refuses, with the HTTP status and OpenAI's error shape:
/// <c>{"error":{"message","type","param","code"}}</c>. Thrown anywhere before the response starts; the endpoint writes it.
/// </summary>
public sealed class OpenAiError(int status, string message, string type = OpenAiError.InvalidRequest, string? param = null, string? code = null)
    : Exception(message)
{
    public const string InvalidRequest = "invalid_request_error", Authentication = "authentication_error",
        NotFound = "not_found_error", RateLimit = "rate_limit_error", Server = "server_error", Unavailable = "service_unavailable_error";

    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;

    public static OpenAiError BadRequest(string message, string? param = null, string? code = null) => new(400, message, InvalidRequest, param, code);

    /// <summary>The error body.</summary>
    public void WriteTo(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteStartObject("error");
        w.WriteString("message", Message);
        w.WriteString("type", Type);
        if (Param is null) w.WriteNull("param"); else w.WriteString("param", Param);
        if (Code is null) w.WriteNull("code"); else w.WriteString("code", Code);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary>
    /// Classifies an exception from mapping or from the engine. Bad input (argument, unsupported feature, a request the
    /// loaded model cannot honour) is 400 with the engine's own sentence; a full queue is 429; anything else is a
    /// server fault (500) whose message is not the client's business beyond its type.
    /// </summary>
    public static OpenAiError From(Exception e, Func<string?, string?>? paramName = null) => e switch
    {
        OpenAiError o => o,
        EngineBusyException => new(429, e.Message + " (server busy: retry after a moment)", RateLimit, null, "queue_full"),
        NotSupportedException => BadRequest(e.Message, null, "unsupported"),
        ArgumentException a => BadRequest(Sentence(a), paramName?.Invoke(a.ParamName) ?? a.ParamName),
        // The mapper's "speculative: true without a draft": the request asks for something this server cannot do.
        InvalidOperationException when e.Message.Contains("speculative", StringComparison.Ordinal) => BadRequest(e.Message, "speculative"),
        JsonException => BadRequest($"the request body is not valid JSON: {e.Message}", null, "invalid_json"),
        // Not the client's cancellation (that one is never answered): the engine is stopping with the host.
        OperationCanceledException or ObjectDisposedException => new(503, "the server is shutting down", Unavailable, null, "shutting_down"),
        // A stream whose client stopped reading for the engine's StreamIdleTimeout: the engine gave its place away.
        TimeoutException => new(504, e.Message, Server, null, "timeout"),
        _ => new(500, $"internal server error ({e.GetType().Name}); see the server log", Server),
    };

    /// <summary>An ArgumentException's message without the " (Parameter 'x')" suffix, which names code, not the request.</summary>
    static string Sentence(ArgumentException a)
    {
        var msg = a.Message;
        if (a.ParamName is { Length: > 0 } name && msg.IndexOf($" (Parameter '{name}')", StringComparison.Ordinal) is var i and > 0) msg = msg[..i];
        return msg.ReplaceLineEndings(" ");
    }
}
