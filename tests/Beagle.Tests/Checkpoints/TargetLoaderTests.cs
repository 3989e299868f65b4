using Beagle.Checkpoints;
using Beagle.Tests.Infrastructure;
using Beagle.Tokenization;
using Xunit;

namespace Beagle.Tests.Checkpoints;

public class TargetLoaderTests
{
    [Fact]
    public void A_llama2c_file_loads_with_the_tokenizer_next_to_it()
    {
        using var t = TargetLoader.Load(TestAssets.ModelPath);
        Assert.Equal("llama2c", t.Format);
        Assert.IsType<Llama2cTokenizer>(t.Tokenizer);
        Assert.Equal(512, t.Tokenizer.VocabSize);
        Assert.Equal(TestAssets.ReadIds("prompt_once_upon_a_time.ids.txt"), t.Tokenizer.Encode("Once upon a time", addBos: true));
    }

    [Fact]
    public void A_llama2c_file_without_a_tokenizer_says_how_to_give_one()
    {
        using var dir = TestAssets.TempDir();
        File.Copy(TestAssets.ModelPath, dir.File("m.bin"));
        var e = Assert.Throws<FileNotFoundException>(() => TargetLoader.Load(dir.File("m.bin")));
        Assert.Contains("--tokenizer", e.Message);
        using var t = TargetLoader.Load(dir.File("m.bin"), TestAssets.TokenizerPath);
        Assert.Equal(512, t.Model.Config.VocabSize);
    }

    [Fact]
    public void A_huggingface_folder_loads_and_needs_a_tokenizer()
    {
        using var dir = TestAssets.TempDir();
        using (var w = Llama2cCheckpoint.Load(TestAssets.ModelPath)) HuggingFaceExport.Write(w, dir.File("hf"));
        var e = Assert.Throws<FileNotFoundException>(() => TargetLoader.Load(dir.File("hf")));
        Assert.Contains("tokenizer.json", e.Message);
        using var t = TargetLoader.Load(dir.File("hf"), TestAssets.TokenizerPath);
        Assert.Equal("huggingface", t.Format);
        Assert.Equal(Beagle.Models.RopeLayout.HalfSplit, t.Model.Config.RopeLayout);
    }
}
