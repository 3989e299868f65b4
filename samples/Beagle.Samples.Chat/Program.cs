// A Semantic Kernel chat on a Beagle model, printing the speculative statistics of every answer.
//   BEAGLE_MODELS=/path/to/stories260K dotnet run --project samples/Beagle.Samples.Chat [-- --prompt "Once upon a time"]
// stories260K is a base (story) model: the plain chat template joins the conversation so the model continues it.
using Beagle.Samples;
using Beagle.SemanticKernel;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;

BeagleModelOptions options; string? prompt;
try { (options, prompt) = SampleModels.Parse(args); }
catch (ArgumentException e) { Console.Error.WriteLine(e.Message); return 2; }

var builder = Kernel.CreateBuilder();
builder.Services.AddLogging(l => l.AddSimpleConsole(c => c.SingleLine = true).SetMinimumLevel(LogLevel.Warning));
builder.AddBeagleChatCompletion(options);
var kernel = builder.Build();
var chat = kernel.GetRequiredService<IChatCompletionService>();
var settings = new BeaglePromptExecutionSettings { Temperature = 0.8f, TopP = 0.95f };
var history = new ChatHistory();

async Task Answer(string text)
{
    history.AddUserMessage(text);
    var answer = new System.Text.StringBuilder();
    IReadOnlyDictionary<string, object?>? stats = null;
    await foreach (var chunk in chat.GetStreamingChatMessageContentsAsync(history, settings, kernel))
    {
        Console.Write(chunk.Content);
        answer.Append(chunk.Content);
        if (chunk.Metadata?.ContainsKey(BeagleChatClient.TokensPerSecondKey) == true) stats = chunk.Metadata;
    }
    history.AddAssistantMessage(answer.ToString());
    Console.WriteLine();
    Console.WriteLine(SampleModels.Stats(stats, (stats?.GetValueOrDefault("Usage") as UsageDetails)?.OutputTokenCount));
}

try
{
    if (prompt is not null) { await Answer(prompt); return 0; }
    Console.WriteLine($"Beagle chat on {options.EffectiveModelId}. Type text (empty line or Ctrl-D to quit).");
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
finally
{
    await kernel.Services.GetRequiredService<BeagleEngineProvider>().DisposeAsync();
}
