using TorchSharp;
using static TorchSharp.torch;

namespace Beagle.Models;

/// <summary>
/// Precomputed rotary tables. Rotation of a head vector q at position p is written as
/// <c>rope(q) = q * Cos[p] + q[Pair] * SinSigned[p]</c>, where <see cref="Pair"/> swaps each dimension with its partner
/// and the sign of the sine is folded into <see cref="SinSigned"/>. This form works for both layouts and lets the
/// target fold the pair permutation into its projection weights (one fewer op per layer).
/// </summary>
public sealed class RotaryTables : IDisposable
{
    /// <summary>[maxPos, headDim] fp32.</summary>
    public Tensor Cos { get; }
    /// <summary>[maxPos, headDim] fp32: -sin on the first element of a pair, +sin on the second.</summary>
    public Tensor SinSigned { get; }
    /// <summary>Partner index of each dimension within a head, length headDim.</summary>
    public long[] Pair { get; }
    public int MaxPositions { get; }

    public RotaryTables(int headDim, int maxPositions, double theta, RopeLayout layout, RopeScaling? scaling, Device device)
    {
        MaxPositions = maxPositions;
        int half = headDim / 2;
        // Computed in float32 as llama2.c (powf) and Hugging Face (float32 inv_freq) do, so angles match bit for bit.
        var invFreq = new double[half];
        for (int i = 0; i < half; i++) invFreq[i] = 1.0f / MathF.Pow((float)theta, 2 * i / (float)headDim);
        if (scaling is { Type: "llama3" } s) ApplyLlama3Scaling(invFreq, s);

        var cos = new float[maxPositions * headDim];
        var sin = new float[maxPositions * headDim];
        Pair = new long[headDim];
        for (int j = 0; j < headDim; j++)
        {
            // freq index and whether j is the first element of its pair
            (int f, bool first, long partner) = layout == RopeLayout.Interleaved
                ? (j / 2, j % 2 == 0, j ^ 1)
                : (j % half, j < half, j < half ? j + half : j - half);
            Pair[j] = partner;
            for (int p = 0; p < maxPositions; p++)
            {
                // llama2.c computes the angle in float: val = pos * freq (float), then cosf/sinf.
                float freq = (float)invFreq[f];
                float angle = p * freq;
                cos[p * headDim + j] = MathF.Cos(angle);
                sin[p * headDim + j] = first ? -MathF.Sin(angle) : MathF.Sin(angle);
            }
        }
        // Owned by this object: detached from any dispose scope the caller may be in (e.g. a model built lazily inside one).
        using var scope = NewDisposeScope();
        Cos = tensor(cos, [maxPositions, headDim]).to(device).DetachFromDisposeScope();
        SinSigned = tensor(sin, [maxPositions, headDim]).to(device).DetachFromDisposeScope();
    }

    static void ApplyLlama3Scaling(double[] invFreq, RopeScaling s)
    {
        double lowWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
        double highWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
        for (int i = 0; i < invFreq.Length; i++)
        {
            double wavelen = 2 * Math.PI / invFreq[i];
            if (wavelen < highWavelen) continue;
            if (wavelen > lowWavelen) { invFreq[i] /= s.Factor; continue; }
            double smooth = (s.OriginalMaxPositionEmbeddings / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
            invFreq[i] = (1 - smooth) * invFreq[i] / s.Factor + smooth * invFreq[i];
        }
    }

    /// <summary>Applies rotary embedding. x: [..., T, nHeads, headDim]; cos/sin: [T, 1, headDim] (gathered rows). Returns a new tensor.</summary>
    public Tensor Apply(Tensor x, Tensor cosRows, Tensor sinRows, Tensor pairIndex)
        => x * cosRows + x.index_select(-1, pairIndex) * sinRows;

    public void Dispose() { Cos.Dispose(); SinSigned.Dispose(); }
}
