using TorchSharp;

namespace Beagle.Models;

/// <summary>
/// Scalars that live for the whole process. TorchSharp turns numbers into native Scalar objects implicitly — including
/// the alpha = 1 it creates inside <c>a + b</c> and <c>add(b)</c> — and the GC may finalise such a temporary while
/// libtorch still reads it, which shows up as a rare "c10::Scalar::toFloat/toDouble" check failure under load. A
/// static field is never collected, so hot paths pass these explicitly (<c>a.add(b, TorchScalars.One)</c>) and avoid
/// methods that create one internally (<c>square()</c> is <c>pow(2)</c>: RMSNorm uses <c>x.mul(x)</c>).
/// </summary>
internal static class TorchScalars
{
    public static readonly Scalar One = 1.0.ToScalar();
}
