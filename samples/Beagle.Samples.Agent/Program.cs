// A Microsoft.Agents.AI agent (ChatClientAgent) over the Beagle chat client; the session keeps the history.
//   BEAGLE_MODELS=/path/to/stories260K dotnet run --project samples/Beagle.Samples.Agent [-- --prompt "Once upon a time"]
using Beagle.Samples;
using Beagle.SemanticKernel;
using Microsoft.Agents.AI;
using Microsoft.Extensions.AI;

BeagleModelOptions options; string? prompt;
try { (options, prompt) = SampleModels.Parse(args); }
catch (ArgumentException e) { Console.Error.WriteLine(e.Message); return 2; }

await using var provider = new BeagleEngineProvider(options);
using var client = new BeagleChatClient(provider);
// No instructions: stories260K is a story model, and instructions would become the first lines of the story.
AIAgent agent = new ChatClientAgent(client, name: "beagle", instructions: null);
var session = await agent.CreateSessionAsync();
var runOptions = new ChatClientAgentRunOptions(new ChatOptions { Temperature = 0.8f, TopP = 0.95f });

async Task Answer(string text)
{
    IReadOnlyDictionary<string, object?>? stats = null; long? tokens = null;
    await foreach (var u in agent.RunStreamingAsync(text, session, runOptions))
    {
        Console.Write(u.Text);
        if (u.RawRepresentation is ChatResponseUpdate { AdditionalProperties: { } p } raw)
        {
            stats = p;
            tokens = raw.Contents.OfType<UsageContent>().FirstOrDefault()?.Details.OutputTokenCount;
        }
    }
    Console.WriteLine();
    Console.WriteLine(SampleModels.Stats(stats, tokens));
}

try
{
    if (prompt is not null) { await Answer(prompt); return 0; }
    Console.WriteLine($"Beagle agent on {options.EffectiveModelId}. Type text (empty line or Ctrl-D to quit).");
    while (true)
    {
        Console.Write("> ");
        var line = Console.ReadLine();
        if (string.IsNullOrWhiteSpace(line)) return 0;
        await Answer(line);
    }
}
catch (Exception e) when (e is IOException or InvalidDataException or NotSupportedException or ArgumentException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
