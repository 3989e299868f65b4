using System.Net;

namespace Beagle.Server;

/// <summary>
/// The HTTP face's own settings (the model's are <see cref="SemanticKernel.BeagleModelOptions"/>). Bound from the
/// "Beagle:Server" section or filled in code; <see cref="Problems"/> names the offending setting.
/// </summary>
public sealed class BeagleServerOptions
{
    public const string SectionName = "Beagle:Server";

    /// <summary>Address to listen on. Loopback by default: exposing the server to a network is a decision, not a default.</summary>
    public string Host { get; set; } = "127.0.0.1";
    /// <summary>TCP port; 0 = any free port (the bound address is logged and available from the server).</summary>
    public int Port { get; set; } = 8080;
    /// <summary>
    /// When set, every request except the liveness and readiness probes must carry <c>Authorization: Bearer KEY</c>;
    /// anyone else gets 401. Null = no authentication (sensible on loopback only).
    /// </summary>
    public string? ApiKey { get; set; }
    /// <summary>Largest request body accepted, in bytes; a larger one gets 413.</summary>
    public long MaxRequestBytes { get; set; } = 1 << 20;
    /// <summary>Largest max_tokens a request may ask for (the model's context bounds it too); more gets 400.</summary>
    public int MaxTokensLimit { get; set; } = 2048;
    /// <summary>
    /// The most prompts one <c>POST /v1/completions</c> may carry (an array of strings or of token-id arrays); more gets
    /// 400. Each prompt is a generation of its own (max_tokens applies to each), and all of a request's prompts wait in
    /// the engine's queue together, so this may not exceed the model's <c>QueueCapacity</c> (checked when the server is mapped).
    /// </summary>
    public int MaxPromptsPerRequest { get; set; } = 16;

    /// <summary>The problems with these options, each naming its setting.</summary>
    public IReadOnlyList<string> Problems(string prefix = "")
    {
        var p = new List<string>();
        if (string.IsNullOrWhiteSpace(Host)) p.Add($"{prefix}{nameof(Host)} is required (e.g. 127.0.0.1)");
        else if (!IPAddress.TryParse(Host, out _) && !string.Equals(Host, "localhost", StringComparison.OrdinalIgnoreCase))
            p.Add($"{prefix}{nameof(Host)} must be an IP address or localhost, got '{Host}'");
        if (Port is < 0 or > 65535) p.Add($"{prefix}{nameof(Port)} must be in [0, 65535], got {Port}");
        if (ApiKey is not null && string.IsNullOrWhiteSpace(ApiKey)) p.Add($"{prefix}{nameof(ApiKey)} must not be blank (leave it unset for no authentication)");
        if (MaxRequestBytes < 1024) p.Add($"{prefix}{nameof(MaxRequestBytes)} must be >= 1024, got {MaxRequestBytes}");
        if (MaxTokensLimit < 1) p.Add($"{prefix}{nameof(MaxTokensLimit)} must be >= 1, got {MaxTokensLimit}");
        if (MaxPromptsPerRequest < 1) p.Add($"{prefix}{nameof(MaxPromptsPerRequest)} must be >= 1, got {MaxPromptsPerRequest}");
        return p;
    }

    public BeagleServerOptions Validate()
    {
        var problems = Problems();
        if (problems.Count > 0) throw new ArgumentException("invalid Beagle server options: " + string.Join("; ", problems));
        return this;
    }

    /// <summary>The address Kestrel binds.</summary>
    internal IPAddress Address => string.Equals(Host, "localhost", StringComparison.OrdinalIgnoreCase) ? IPAddress.Loopback : IPAddress.Parse(Host);

    public BeagleServerOptions Clone() => (BeagleServerOptions)MemberwiseClone();
}
