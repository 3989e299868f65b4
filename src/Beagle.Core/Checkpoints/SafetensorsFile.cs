using System.Buffers.Binary;
using System.Text.Json;
using static TorchSharp.torch;

namespace Beagle.Checkpoints;

/// <summary>One tensor's entry in a safetensors header.</summary>
/// <param name="DType">"F32", "F16", "BF16", ... as written in the file.</param>
/// <param name="Shape">The tensor's shape.</param>
/// <param name="Begin">Byte offset of the data, relative to the end of the header.</param>
/// <param name="End">Exclusive end offset, relative to the end of the header.</param>
public sealed record SafetensorsEntry(string DType, long[] Shape, long Begin, long End);

/// <summary>
/// The safetensors format (8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
/// then raw little-endian bytes). Reading the header ourselves lets the loader check names, dtypes, shapes and offsets
/// and say what is wrong before any data is read; the data itself is read by TorchSharp.PyBridge. Writing is done by
/// hand because PyBridge 1.4.4's writer stores the header length in UTF-16 chars and does not align the data.
/// </summary>
public static class SafetensorsFile
{
    /// <summary>Reads and checks the header of <paramref name="path"/>: every entry's byte range must fit the file and match its dtype × shape.</summary>
    public static IReadOnlyDictionary<string, SafetensorsEntry> ReadHeader(string path)
    {
        using var fs = File.OpenRead(path);
        Span<byte> lenBytes = stackalloc byte[8];
        if (fs.Length < 8 || fs.Read(lenBytes) != 8) throw new InvalidDataException($"{path}: too short to be a safetensors file");
        ulong headerLen = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (headerLen == 0 || headerLen > 100_000_000 || (long)headerLen > fs.Length - 8)
            throw new InvalidDataException($"{path}: header length {headerLen} does not fit the file ({fs.Length} bytes); not a safetensors file or truncated");
        var json = new byte[headerLen];
        fs.ReadExactly(json);
        long dataBytes = fs.Length - 8 - (long)headerLen;
        var result = new Dictionary<string, SafetensorsEntry>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(json);
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Name == "__metadata__") continue;
                var dtype = p.Value.GetProperty("dtype").GetString() ?? "";
                var shape = p.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                var offs = p.Value.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                if (offs.Length != 2 || offs[0] < 0 || offs[1] < offs[0] || offs[1] > dataBytes)
                    throw new InvalidDataException($"{path}: tensor '{p.Name}' has data_offsets [{string.Join(", ", offs)}] outside the {dataBytes} data bytes; the file is truncated or corrupt");
                long n = shape.Aggregate(1L, (a, b) => a * b);
                int size = ElementSize(dtype);
                if (size > 0 && n * size != offs[1] - offs[0])
                    throw new InvalidDataException($"{path}: tensor '{p.Name}' ({dtype} [{string.Join(", ", shape)}]) needs {n * size} bytes but its offsets span {offs[1] - offs[0]}");
                result[p.Name] = new SafetensorsEntry(dtype, shape, offs[0], offs[1]);
            }
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"{path}: the safetensors header is not valid JSON of the expected form ({e.Message})", e);
        }
        return result;
    }

    /// <summary>Bytes per element of a safetensors dtype, or 0 when unknown.</summary>
    public static int ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" or "U64" => 8, "F32" or "I32" or "U32" => 4, "F16" or "BF16" or "I16" or "U16" => 2,
        "I8" or "U8" or "BOOL" or "F8_E4M3" or "F8_E5M2" => 1, _ => 0,
    };

    /// <summary>
    /// Writes <paramref name="tensors"/> (CPU tensors of float32, bfloat16 or float16) in order. The header is padded
    /// with spaces to a multiple of 8 bytes, as the reference implementation does, so the data is aligned.
    /// </summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var header = new Dictionary<string, object>(StringComparer.Ordinal)
        {
            ["__metadata__"] = metadata ?? new Dictionary<string, string> { ["format"] = "pt" },
        };
        long offset = 0;
        var blobs = new List<byte[]>(list.Count);
        foreach (var (name, t) in list)
        {
            using var c = t.cpu().contiguous();
            string dtype = c.dtype switch
            {
                ScalarType.Float32 => "F32", ScalarType.BFloat16 => "BF16", ScalarType.Float16 => "F16",
                _ => throw new ArgumentException($"tensor '{name}': dtype {c.dtype} is not written (use float32, bfloat16 or float16)"),
            };
            var bytes = c.bytes.ToArray();
            header[name] = new { dtype, shape = c.shape, data_offsets = new[] { offset, offset + bytes.LongLength } };
            offset += bytes.LongLength;
            blobs.Add(bytes);
        }
        var json = JsonSerializer.SerializeToUtf8Bytes(header);
        int padded = (json.Length + 7) / 8 * 8;
        var tmp = path + ".tmp";
        using (var fs = File.Create(tmp))
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded);
            fs.Write(len);
            fs.Write(json);
            for (int i = json.Length; i < padded; i++) fs.WriteByte((byte)' ');
            foreach (var b in blobs) fs.Write(b);
        }
        File.Move(tmp, path, overwrite: true);
    }
}
