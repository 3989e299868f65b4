using Beagle.Decoding;
using Beagle.Cli.Reporting;
using Beagle.Tests.Infrastructure;
using Xunit;

namespace Beagle.Tests.Cli;

public class BenchReportTests
{
    // The shape `beagle bench --json` writes (snake_case), with a plain-decoding row that has no acceptance by depth.
    const string SampleJson = """
        {
          "machine": "2 vCPU x64, Linux, .NET 10",
          "threads": 1,
          "max_new_tokens": 128,
          "prompts": 16,
          "methods": [
            {"name": "baseline", "draft": null, "tokens_per_second": 561.4, "speedup": 1.0, "acceptance_length": 1.0, "peak_memory_mb": 182.5, "acceptance_by_depth": []},
            {"name": "eagle2", "draft": "e2.safetensors", "tokens_per_second": 812.9, "speedup": 1.448, "acceptance_length": 2.31, "peak_memory_mb": 196.1, "acceptance_by_depth": [0.78, 0.61, 0.47]},
            {"name": "beagle", "draft": "b.safetensors", "tokens_per_second": 903.2, "speedup": 1.609, "acceptance_length": 2.64, "peak_memory_mb": 197.8, "acceptance_by_depth": [0.84, 0.69, 0.55, 0.43], "draft_bytes": 1572864}
          ],
          "greedy_outputs_identical": true
        }
        """;

    static readonly byte[] PngSignature = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    [Fact]
    public void The_snake_case_json_binds_every_field()
    {
        var r = BenchResult.Parse(SampleJson);
        Assert.Equal("2 vCPU x64, Linux, .NET 10", r.Machine);
        Assert.Equal((1, 128, 16), (r.Threads, r.MaxNewTokens, r.Prompts));
        Assert.True(r.GreedyOutputsIdentical);
        Assert.Equal(["baseline", "eagle2", "beagle"], r.Methods.Select(m => m.Name));
        var b = r.Methods[2];
        Assert.Equal(("b.safetensors", 903.2, 1.609, 2.64, 197.8), (b.Draft, b.TokensPerSecond, b.Speedup, b.AcceptanceLength, b.PeakMemoryMb));
        Assert.Equal([0.84, 0.69, 0.55, 0.43], b.AcceptanceByDepth);
        Assert.Equal(1572864, b.DraftBytes);
        Assert.Equal(0, r.Methods[1].DraftBytes);   // absent (older results): 0
        Assert.True(r.PeakMemoryPerMethod);          // absent: the per-method peak older results measured
        Assert.Null(r.Methods[0].Draft);
        // And back: the names written are the snake_case ones, so a report can be redrawn from our own output.
        Assert.Contains("\"tokens_per_second\"", r.ToJson());
        Assert.Equal(r.Methods[1].AcceptanceByDepth, BenchResult.Parse(r.ToJson()).Methods[1].AcceptanceByDepth);
    }

    [Fact]
    public void A_report_has_a_table_row_per_method_and_three_real_png_charts()
    {
        using var dir = TestAssets.TempDir();
        var files = BenchReport.Write(BenchResult.Parse(SampleJson), dir.Path, "beagle bench --report out");

        var md = File.ReadAllText(Path.Combine(dir.Path, BenchReport.MarkdownFile));
        Assert.Equal(Path.Combine(dir.Path, BenchReport.MarkdownFile), files[0]);
        Assert.Contains("| Method | Draft | Tokens/s | Speedup | Acceptance length τ | Peak memory (MB) | Draft memory |", md);
        Assert.Contains("| baseline | — | 561.4 | 1.00× | 1.00 | 182 | 0 |", md);
        Assert.Contains("| eagle2 | e2.safetensors | 812.9 | 1.45× | 2.31 | 196 | 0 |", md);
        Assert.Contains("| beagle | b.safetensors | 903.2 | 1.61× | 2.64 | 198 | 1.50 MB |", md);
        var mainTableRows = md.Split('\n').TakeWhile(l => !l.StartsWith("Tokens/s:")).Count(l => l.StartsWith("| ") && !l.StartsWith("| Method"));
        Assert.Equal(3, mainTableRows);
        Assert.Contains("`beagle bench --report out`", md);
        Assert.Contains("2 vCPU x64, Linux, .NET 10", md);
        Assert.Contains("| beagle | 0.84 | 0.69 | 0.55 | 0.43 |", md);   // by-depth table pads shorter rows
        Assert.Contains("| eagle2 | 0.78 | 0.61 | 0.47 | |", md);
        Assert.DoesNotContain("| baseline | |", md);                      // plain decoding has no depth row

        foreach (var name in new[] { BenchReport.TokensPerSecondChart, BenchReport.SpeedupChart, BenchReport.AcceptanceChart })
        {
            var path = Path.Combine(dir.Path, name);
            Assert.Contains(path, files);
            Assert.Contains($"]({name})", md);
            var bytes = File.ReadAllBytes(path);
            Assert.Equal(PngSignature, bytes[..8]);
            Assert.True(bytes.Length > 10_000, $"{name}: only {bytes.Length} bytes; a chart with text and bars is larger");
            // IHDR width and height (big-endian, bytes 16..23): the size the report asks for.
            Assert.Equal(900, System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16, 4)));
            Assert.Equal(540, System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20, 4)));
        }
    }

    [Fact]
    public void Without_acceptance_by_depth_there_is_no_depth_chart()
    {
        using var dir = TestAssets.TempDir();
        var r = BenchResult.Parse(SampleJson);
        r = r with { Methods = [r.Methods[0]] };
        var files = BenchReport.Write(r, dir.Path, "beagle bench");
        Assert.Equal(3, files.Count);
        Assert.False(File.Exists(Path.Combine(dir.Path, BenchReport.AcceptanceChart)));
        Assert.DoesNotContain("depth", File.ReadAllText(files[0]));
    }
}
