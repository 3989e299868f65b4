using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Beagle.Models;

/// <summary>
/// The target forward in libtorch ops, for every device but the CPU (a GPU): the fused tensor forward of
/// <see cref="TensorTargetForward"/> with the weights as device tensors. The q | k product carries the rotary partner
/// rows, so rotary is one mul and one addcmul with no gather; products with a residual or bias are one addmm.
/// </summary>
internal sealed class TorchTargetForward : TensorTargetForward
{
    /// <summary>One layer's folded weights (see <see cref="TensorTargetForward.Fold"/>), on the device.</summary>
    sealed record Layer(Tensor WqkvT, Tensor? Bqkv, Tensor WoT, Tensor W13T, Tensor W2T) : IDisposable
    {
        public void Dispose() { WqkvT.Dispose(); Bqkv?.Dispose(); WoT.Dispose(); W13T.Dispose(); W2T.Dispose(); }
    }

    readonly Layer[] _layers;
    readonly Tensor _lmHeadT;   // [D, V]

    public TorchTargetForward(LlamaModel model, LlamaWeights w) : base(model)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Tensor Keep(Tensor t) => t.to(float32).to(Device).contiguous().DetachFromDisposeScope();
        _lmHeadT = Keep(model.LmHeadWeight.t());
        _layers = new Layer[Config.Layers];
        for (int l = 0; l < _layers.Length; l++)
        {
            var (wqkvT, b, woT, w13T, w2T) = Fold(w.Layers[l], l, partners: true);
            _layers[l] = new Layer(Keep(wqkvT), b is null ? null : Keep(b), Keep(woT), Keep(w13T), Keep(w2T));
        }
    }

    protected override Tensor Embed(ReadOnlySpan<int> tokens)
    {
        var ids = new long[tokens.Length];
        for (int i = 0; i < ids.Length; i++) ids[i] = tokens[i];
        return Embedding.index_select(0, tensor(ids, device: Device));
    }

    protected override Tensor Norm(Tensor x, int n, Tensor? weight = null)
    {
        var y = x * x.mul(x).mean([-1], keepdim: true).add_(EpsS, OneS).rsqrt_();
        return weight is null ? y : y.mul_(weight);
    }

    protected override Tensor Qkv(int layer, Tensor h, int n)
    {
        var L = _layers[layer];
        return L.Bqkv is null ? h.mm(L.WqkvT) : addmm(L.Bqkv, h, L.WqkvT, 1, 1);
    }

    protected override Tensor Partners(Tensor qkv, Tensor a, int n) => qkv.narrow(1, Q + Kv, Q + Kv).view(n, H + KvH, Hd);
    protected override int VOffset => 2 * (Q + Kv);
    protected override Tensor Out(int layer, Tensor attn, int n, Tensor residual) => addmm(residual, attn, _layers[layer].WoT, 1, 1);
    protected override Tensor GateUp(int layer, Tensor h, int n) => h.mm(_layers[layer].W13T);

    protected override Tensor SwiGlu(Tensor gu, int n)
    {
        int hff = Config.HiddenDim;
        return F.silu(gu.narrow(1, 0, hff)).mul_(gu.narrow(1, hff, hff));
    }

    protected override Tensor Down(int layer, Tensor act, int n, Tensor residual) => addmm(residual, act, _layers[layer].W2T, 1, 1);
    protected override Tensor HeadLogits(Tensor hidden, int n) => hidden.mm(_lmHeadT);
    public override Tensor Logits(Tensor hidden) => matmul(hidden, _lmHeadT);

    public override void Dispose()
    {
        foreach (var l in _layers) l.Dispose();
        _lmHeadT.Dispose();
        base.Dispose();
    }
}
