using Beagle.Tests.Infrastructure;
using Beagle.Tokenization;
using Xunit;

namespace Beagle.Tests.SemanticKernel;

public sealed class ChatTemplateTests
{
    static readonly ChatTurn[] Conversation =
        [new(ChatTurnRole.System, "Be brief."), new(ChatTurnRole.User, "Hi"), new(ChatTurnRole.Assistant, "Hello"), new(ChatTurnRole.User, "Bye")];

    [Fact]
    public void Each_template_renders_the_conversation_in_its_format()
    {
        Assert.Equal("Be brief.\nHi\nHello\nBye", ChatTemplates.Render(ChatTemplateKind.Plain, Conversation).Text);
        Assert.Equal("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s><s>[INST] Bye [/INST]", ChatTemplates.Render(ChatTemplateKind.Llama2, Conversation).Text);
        Assert.Equal("[INST] Be brief.\n\nHi [/INST] Hello</s>[INST] Bye [/INST]", ChatTemplates.Render(ChatTemplateKind.Mistral, Conversation).Text);
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
            ChatTemplates.Render(ChatTemplateKind.ChatML, Conversation).Text);
        var llama3 = ChatTemplates.Render(ChatTemplateKind.Llama3, Conversation);
        Assert.StartsWith("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", llama3.Text);
        Assert.EndsWith("<|start_header_id|>assistant<|end_header_id|>\n\n", llama3.Text);
        Assert.Equal(["<|eot_id|>"], llama3.StopStrings);
    }

    [Theory]
    [InlineData("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{% endfor %}", ChatTemplateKind.Llama3)]
    [InlineData("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}", ChatTemplateKind.ChatML)]
    [InlineData("{{ '[INST] <<SYS>>' }}", ChatTemplateKind.Llama2)]
    [InlineData("{{ '[INST] ' + m.content + ' [/INST]' }}", ChatTemplateKind.Mistral)]
    public void A_folder_template_is_detected_from_tokenizer_config(string template, ChatTemplateKind expected)
    {
        using var dir = TestAssets.TempDir();
        File.WriteAllText(dir.File("tokenizer_config.json"), System.Text.Json.JsonSerializer.Serialize(new { chat_template = template }));
        Assert.Equal(expected, ChatTemplates.Detect(dir.Path).Kind);
    }

    [Fact]
    public void A_llama2c_file_or_a_folder_without_template_is_plain()
    {
        Assert.Equal(ChatTemplateKind.Plain, ChatTemplates.Detect(TestAssets.ModelPath).Kind);
        using var dir = TestAssets.TempDir();
        File.WriteAllText(dir.File("tokenizer_config.json"), "{}");
        Assert.Equal(ChatTemplateKind.Plain, ChatTemplates.Detect(dir.Path).Kind);
        Assert.Equal(ChatTemplateKind.ChatML, ChatTemplates.Parse("Qwen"));
        Assert.Throws<ArgumentException>(() => ChatTemplates.Parse("jinja"));
    }
}
