// A Semantic Kernel chat on a Beagle model, printing the speculative statistics of every answer (on stderr).
//   dotnet run --project samples/Beagle.Samples.Chat -c Release [-- --prompt "Tom found a red ball in the garden."]
// With no --target it runs the bundled stories5M with its bundled Beagle draft (when present); --target PATH (or
// stories260K), --tokenizer, --draft DIR, --no-draft, --template, --max-tokens change that.
// stories5M is a base (story) model: the plain chat template joins the conversation so the model continues it.
using Beagle.Samples;
using Beagle.SemanticKernel;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;

if (!SampleModels.TryParse(args, out var options, out var prompt)) return 2;

var builder = Kernel.CreateBuilder();
// Warnings and errors, one line each on stderr. A model that fails to load is reported once, by the catch below.
builder.Services.AddLogging(l => l.AddSampleConsole().SetMinimumLevel(LogLevel.Warning)
    .AddFilter(typeof(BeagleEngineProvider).FullName, LogLevel.None));
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
    Console.Error.WriteLine(SampleModels.Stats(stats, (stats?.GetValueOrDefault("Usage") as UsageDetails)?.OutputTokenCount));
}

try
{
    if (prompt is not null) { await Answer(prompt); return 0; }
    Console.Error.WriteLine($"Beagle chat on {options.EffectiveModelId}. Type text (empty line or Ctrl-D to quit).");
    while (true)
    {
        Console.Write("> ");
        var line = Console.ReadLine();
        if (string.IsNullOrWhiteSpace(line)) return 0;
        await Answer(line);
    }
}
catch (Exception e) when (e is not OperationCanceledException)
{
    return SampleModels.Fail(e);
}
finally
{
    await kernel.Services.GetRequiredService<BeagleEngineProvider>().DisposeAsync();
}
