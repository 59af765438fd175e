"""The autograd Function of a patch-grid block: its forward runs the block's program and keeps x~, masks
and counts; its backward hands gradients from layer to layer on the patch grid."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_input, conv2d_weight

from ..ops.filtered import FilteredConv2d
from ..ops.geometry import axis_modes, filter_geometry
from ..ops.stages import filtered_backward, grad_patch_sums, input_sums, patch_grid_grads, spread_grid
from ..surgery.blocks import Node
from .carried import CarriedGrad, Slot, is_placeholder, pack_bits, placeholder, tagged, unpack_bits
from .program import layer_kind

__all__ = ["value_needs", "hands_grid", "counted_masks", "run_program", "ChainFn", "conv_backward"]


def value_needs(nodes: list[Node], x_grad: bool, trains: set) -> list[bool]:
    """For every value (0 the input, i + 1 node i's output): does its gradient matter?"""
    needs = [x_grad]
    for i, node in enumerate(nodes):
        needs.append(any(needs[s] for s in node.src) or (i, "weight") in trains or (i, "bias") in trains)
    return needs


def hands_grid(module: Optional[nn.Module]) -> bool:
    """Whether ``module`` is a filtered conv whose grad_x is its patch grid (stride 1, collapsed kernel, "same")."""
    return (isinstance(module, FilteredConv2d) and module.stride == (1, 1)
            and axis_modes(module.stride, module.dilation, module.patch_size) == ("collapse", "collapse")
            and all(2 * p == d * (k - 1) for p, d, k in zip(module.padding, module.dilation, module.kernel_size)))


def counted_masks(nodes: list[Node], modules: list[Optional[nn.Module]]) -> dict[int, int]:
    """Activations whose mask a backward needs only as patch sums: act node -> the conv node that reads them.

    That is when every reader of the activation's output is a filtered conv that hands back its patch
    grid, all with one patch size r (so the gradient there is one grid), and the mask reaches exactly
    one conv, a filtered one with the same r, through BatchNorm / Identity layers only.
    """
    readers: dict[int, list[int]] = {}
    for j, node in enumerate(nodes):
        for v in node.src:
            readers.setdefault(v, []).append(j)
    out = {}
    for i, (node, module) in enumerate(zip(nodes, modules)):
        if module is None or layer_kind(module) != "act" or i + 1 == len(nodes):
            continue
        after = [modules[j] for j in readers.get(i + 1, [])]
        sizes = {m.patch_size for m in after if hands_grid(m)}
        if not after or len(sizes) != 1 or not all(hands_grid(m) for m in after) or sizes.pop() ** 2 > 255:
            continue
        r = after[0].patch_size
        v = node.src[0]
        while (v > 0 and len(readers[v]) == 1 and modules[v - 1] is not None
               and layer_kind(modules[v - 1]) in ("bn", "identity")):
            v = nodes[v - 1].src[0]
        conv = modules[v - 1] if v > 0 else None
        if (len(readers.get(v, [])) == 1 and isinstance(conv, FilteredConv2d) and conv.patch_size == r
                and axis_modes(conv.stride, conv.dilation, r) == ("collapse", "collapse")):
            out[i] = v - 1
    return out


def run_program(nodes: list[Node], modules: list[Optional[nn.Module]], x: Tensor, needs: list[bool],
             trains: set) -> tuple[Tensor, list[Tensor], list[dict]]:
    """Run a block program (the block's own layers, in its order): (output, tensors to keep, per-node records).

    With autograd on and nothing to keep (``needs`` all False, ``trains`` empty) this is the block's
    per-layer forward.
    """
    values: list[Tensor] = [x]
    saved: list[Tensor] = []
    info: list[dict] = []
    counted = counted_masks(nodes, modules) if any(needs) else {}
    for i, (node, module) in enumerate(zip(nodes, modules)):
        inp = values[node.src[0]]
        rec: dict = {}
        if node.kind == "add":
            out = inp + values[node.src[1]]
        else:
            out = module(inp)  # an in-place activation is fine: its mask is read from the output
        kind = "add" if module is None else layer_kind(module)
        if kind == "conv":
            rec["in_shape"] = inp.shape
            if isinstance(module, FilteredConv2d):  # its filtered grad_x too, trained or not
                rec["axes"] = filter_geometry(inp.shape, out.shape, module.kernel_size, module.stride, module.padding,
                                              module.dilation, module.patch_size,
                                              axis_modes(module.stride, module.dilation, module.patch_size))
            if (i, "weight") in trains:  # x~ (1 / r^2 of the input) for a filtered conv; exact BP needs x itself
                saved.append(tagged(input_sums(inp, rec["axes"], module.groups) if "axes" in rec else inp,
                                     "conv"))
                rec["saved"] = len(saved) - 1
        elif kind == "act" and needs[node.src[0]]:
            if isinstance(module, nn.ReLU):
                mask = out > 0
            else:  # Hardtanh / ReLU6: the gradient passes strictly inside (min_val, max_val)
                mask = (out > module.min_val) & (out < module.max_val)
            if i in counted:  # its patch sums, on the grid of the conv that reads them: 1 byte per patch
                counts = grad_patch_sums(mask.to(out.dtype), info[counted[i]]["axes"])  # (C, N, Hp, Wp)
                # patch-major, the layout of the grid a filtered conv hands back: (N, Hp, Wp, C)
                saved.append(tagged(counts.permute(1, 2, 3, 0).to(torch.uint8).contiguous(), "activation"))
                rec["counts"] = True
            else:
                saved.append(tagged(pack_bits(mask), "activation"))  # 1 bit per element
            rec["saved"], rec["shape"] = len(saved) - 1, out.shape
        values.append(out)
        info.append(rec)
    return values[-1], saved, info


class ChainFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, nodes: list[Node], modules: list[Optional[nn.Module]], trained: list[tuple[int, str]],
                slot: Slot, in_slot: Optional[Slot], x: Tensor, *params: Tensor) -> Tensor:
        trains = set(trained)
        needs = value_needs(nodes, x.requires_grad, trains)
        out, saved, info = run_program(nodes, modules, x, needs, trains)
        ctx.nodes, ctx.modules, ctx.trained, ctx.slot, ctx.in_slot = nodes, modules, trained, slot, in_slot
        ctx.info, ctx.needs, ctx.x_shape = info, needs, x.shape
        ctx.save_for_backward(*saved)
        return out.clone() if out is x else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        nodes, modules, saved, info, needs = ctx.nodes, ctx.modules, ctx.saved_tensors, ctx.info, ctx.needs
        from_slot, ctx.slot.grad = ctx.slot.grad, None
        grad = None if is_placeholder(grad_out) else CarriedGrad(grad_out.shape, dense=grad_out)
        grad = from_slot if grad is None else grad + from_slot
        grads: dict[int, CarriedGrad] = {len(nodes): grad}
        params: dict[tuple[int, str], Tensor] = {}
        for i in reversed(range(len(nodes))):
            g = grads.pop(i + 1, None)
            if g is None:
                continue
            node, module, rec = nodes[i], modules[i], info[i]
            kind = "add" if module is None else layer_kind(module)
            ins: list[Optional[CarriedGrad]] = [g] if len(node.src) == 1 else [g.shared()] * len(node.src)
            if kind == "conv":
                ins = [conv_backward(module, g, rec, saved, needs[node.src[0]], i, ctx.trained, params)]
            elif kind == "bn":  # eval: y = (x - mean) * w / sqrt(var + eps) + b, a per-channel scale
                scale = torch.rsqrt(module.running_var + module.eps)
                ins = [g.scaled(scale if module.weight is None else scale * module.weight)]
            elif kind == "act" and "counts" in rec:
                ins = [g.counted(saved[rec["saved"]].permute(3, 0, 1, 2))]  # (C, N, Hp, Wp) view
            elif kind == "act":
                mask = unpack_bits(saved[rec["saved"]], rec["shape"], grad_out.dtype) if "saved" in rec else None
                ins = [None if mask is None else g.masked(mask)]
            for s, gs in zip(node.src, ins):
                if gs is not None and needs[s]:
                    grads[s] = gs + grads.get(s)
        grad_x = grads.get(0)
        if grad_x is not None and ctx.in_slot is not None:  # the block below reads it from its output's slot
            ctx.in_slot.grad = grad_x + ctx.in_slot.grad
            grad_in = placeholder(ctx.x_shape, grad_out)
        else:
            grad_in = None if grad_x is None else grad_x.full()
        return (None, None, None, None, None, grad_in, *(params.get(key) for key in ctx.trained))


def conv_backward(conv: nn.Conv2d, g: CarriedGrad, rec: dict, saved: tuple, need_x: bool, i: int,
                   trained: list[tuple[int, str]], params: dict) -> Optional[CarriedGrad]:
    """The gradient of a conv's input (None if not needed); fills ``params`` with its weight / bias gradients."""
    need_w, need_b = (i, "weight") in trained, (i, "bias") in trained
    if not (need_x or need_w or need_b):
        return None
    axes = rec.get("axes")
    weight = conv.weight.detach()
    if axes is not None and all(ax.mode == "collapse" for ax in axes):
        g_sum = g.patch_sums(axes, conv.groups)  # (C_out, N, Hp, Wp)
        x_sum = saved[rec["saved"]] if "saved" in rec else None
        grid, grad_w, grad_b = patch_grid_grads(g_sum, x_sum, weight, axes, conv.groups,
                                                rec["in_shape"], weight.shape, need_x, need_w, need_b)
        grad_x = None
        if need_x:
            same = all(ax.stride == 1 and ax.offset == 0 and ax.size_in == ax.size_out for ax in axes)
            grad_x = (CarriedGrad(rec["in_shape"], grid=grid[:, :, 0, :, 0, :], axes=axes, owned=True) if same
                      else CarriedGrad(rec["in_shape"], dense=spread_grid(grid, axes)))  # strided: full resolution here
    else:
        g_y = g.full()
        if axes is not None:  # a dilated filtered conv: the per-layer op
            x_sum = saved[rec["saved"]] if "saved" in rec else None
            gx, grad_w, grad_b = filtered_backward(g_y, x_sum, weight, axes, conv.groups,
                                                   rec["in_shape"], weight.shape, need_x, need_w, need_b)
        else:  # exact BP (a trained conv without a filter needs its input; a frozen one only its weight)
            args = (conv.stride, conv.padding, conv.dilation, conv.groups)
            gx = conv2d_input(rec["in_shape"], weight, g_y, *args) if need_x else None
            grad_w = conv2d_weight(saved[rec["saved"]], weight.shape, g_y, *args) if need_w else None
            grad_b = g_y.sum((0, 2, 3)) if need_b else None
        grad_x = None if gx is None else CarriedGrad(rec["in_shape"], dense=gx)
    if need_w:
        params[(i, "weight")] = grad_w
    if need_b:
        params[(i, "bias")] = grad_b
    return grad_x
