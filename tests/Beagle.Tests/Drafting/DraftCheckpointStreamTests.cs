using Beagle.Drafting;
using Beagle.Tests.Infrastructure;
using Xunit;
using static Beagle.Tests.Drafting.DraftTestKit;

namespace Beagle.Tests.Drafting;

/// <summary>A checkpoint's two files loaded from streams (a saved model's zip entries) equal the folder load, with the same checks.</summary>
[Collection(DraftingCollection.Name)]
public class DraftCheckpointStreamTests
{
    [Theory]
    [InlineData(DraftConfig.Beagle, true)]
    [InlineData(DraftConfig.Eagle2, false)]
    public void Streams_load_the_parameters_the_folder_holds(string arch, bool seekable)
    {
        using var dir = TestAssets.TempDir();
        using (var draft = NewDraft(arch)) DraftCheckpoint.Save(draft, dir.Path);
        using var fromFolder = DraftCheckpoint.Load(dir.Path, Target);
        using var meta = File.OpenRead(Path.Combine(dir.Path, DraftCheckpoint.MetaFile));
        using Stream weights = seekable ? File.OpenRead(Path.Combine(dir.Path, DraftCheckpoint.WeightsFile))
            : new ForwardOnlyStream(File.ReadAllBytes(Path.Combine(dir.Path, DraftCheckpoint.WeightsFile)));
        using var fromStreams = DraftCheckpoint.Load(meta, weights, Target, "model.zip:beagle/draft");
        Assert.Equal(arch, fromStreams.Architecture);
        foreach (var ((name, a), (_, b)) in fromFolder.named_parameters().Zip(fromStreams.named_parameters()))
            Assert.True(a.data<float>().ToArray().SequenceEqual(b.data<float>().ToArray()), $"{name} differs");
    }

    [Fact]
    public void Corrupt_weights_from_a_stream_are_refused_naming_the_source()
    {
        using var dir = TestAssets.TempDir();
        using (var draft = NewDraft(DraftConfig.Beagle)) DraftCheckpoint.Save(draft, dir.Path);
        using var meta = File.OpenRead(Path.Combine(dir.Path, DraftCheckpoint.MetaFile));
        var bytes = File.ReadAllBytes(Path.Combine(dir.Path, DraftCheckpoint.WeightsFile));
        bytes[^1] ^= 0x5a;
        using var weights = new MemoryStream(bytes);
        var e = Assert.Throws<InvalidDataException>(() => DraftCheckpoint.Load(meta, weights, Target, "model.zip:beagle/draft"));
        Assert.Contains("draft.safetensors in model.zip:beagle/draft is corrupt", e.Message);
    }

    /// <summary>A stream that can only be read forward (like a zip entry's).</summary>
    sealed class ForwardOnlyStream(byte[] bytes) : Stream
    {
        readonly MemoryStream _inner = new(bytes);
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override int Read(byte[] buffer, int offset, int count) => _inner.Read(buffer, offset, count);
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
