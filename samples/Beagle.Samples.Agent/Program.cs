// A Microsoft.Agents.AI agent (ChatClientAgent) over the Beagle chat client; the session keeps the history.
//   dotnet run --project samples/Beagle.Samples.Agent -c Release [-- --prompt "Tom found a red ball in the garden."]
// With no --target it runs the bundled stories5M with its bundled Beagle draft (when present); --target PATH (or
// stories260K), --tokenizer, --draft DIR, --no-draft, --template, --max-tokens change that.
//
// stories5M is a story model, not an assistant: it never saw questions and answers. So the agent writes a story with
// you: each message is a sentence of the story (its start, or what happens next), and the agent's answer is the rest of
// that paragraph. The session's history is the story so far.
using Beagle.Samples;
using Beagle.SemanticKernel;
using Microsoft.Agents.AI;
using Microsoft.Extensions.AI;

if (!SampleModels.TryParse(args, out var options, out var prompt)) return 2;

await using var provider = new BeagleEngineProvider(options);
using var client = new BeagleChatClient(provider);
// No instructions: they would become the first lines of the story.
AIAgent agent = new ChatClientAgent(client, name: "storyteller", instructions: null);
var session = await agent.CreateSessionAsync();
// One paragraph per answer: the plain template joins the turns with line breaks, so a line break ends the agent's part.
var runOptions = new ChatClientAgentRunOptions(new ChatOptions { Temperature = 0.8f, TopP = 0.95f, StopSequences = ["\n"] });

async Task Answer(string text, bool echo)
{
    IReadOnlyDictionary<string, object?>? stats = null; long? tokens = null;
    bool started = false;
    await foreach (var u in agent.RunStreamingAsync(text, session, runOptions))
    {
        // The story reads as prose: with --prompt your sentence and then the agent's (written once the model answers, so
        // a failure prints nothing); after "> your sentence" the answer starts on its own line, without the leading space.
        var piece = started || echo ? u.Text : u.Text.TrimStart();
        if (!started && piece.Length > 0 && echo) Console.Write(text);
        started |= piece.Length > 0;
        Console.Write(piece);
        if (u.RawRepresentation is ChatResponseUpdate { AdditionalProperties: { } p } raw)
        {
            stats = p;
            tokens = raw.Contents.OfType<UsageContent>().FirstOrDefault()?.Details.OutputTokenCount;
        }
    }
    Console.WriteLine();
    Console.Error.WriteLine(SampleModels.Stats(stats, tokens));
}

try
{
    if (prompt is not null) { await Answer(prompt, echo: true); return 0; }
    Console.Error.WriteLine($"Beagle storyteller on {options.EffectiveModelId}. Write the first sentence of a story, then what happens next (empty line or Ctrl-D to quit).");
    while (true)
    {
        Console.Write("> ");
        var line = Console.ReadLine();
        if (string.IsNullOrWhiteSpace(line)) return 0;
        await Answer(line, echo: false);
    }
}
catch (Exception e) when (e is not OperationCanceledException)
{
    return SampleModels.Fail(e);
}
