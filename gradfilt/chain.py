"""Patch-grid backward for chains of filtered layers: whole blocks whose backward stays on the patch grid.

Between two filtered convs on the same patch grid the gradient is constant on every patch: a
filtered stride-1 "same" conv hands back grad_x = spread(theta~^T g~y), one value per patch. A
frozen (eval-mode or folded) BatchNorm scales it per channel and ReLU / ReLU6 multiply it by a
0/1 mask m, so the patch sums of g_y the next filtered conv needs are

    sum_{p in P} g_y[p] = grid[P] * s * sum_{p in P} m[p]

(s the BatchNorm scale): the per-layer result, without a full-resolution gradient. A block's
backward therefore carries its gradient as ``(dense * scale + spread(grid)) * mask``
(:class:`_Grad`): ``dense`` is what arrives from outside the chain (the classifier's global
pooling, an identity path), ``grid`` what filtered convs hand back, ``scale`` and ``mask`` the
BatchNorm scales and ReLU masks not yet applied to ``dense``. Along a
residual add both branches get the same gradient; a mask applied to a value with both parts is
kept pending until a conv reads it.

:class:`PatchGridBlock` swaps a known block (ResNet BasicBlock / Bottleneck, MobileNetV2
InvertedResidual, MCUNetBlock, torchvision's Conv2dNormActivation and mmcv's ConvModule, also as the layers of
another block: MMSegmentation's MobileNetV2) for a module with the same children (the
same parameter names) whose forward runs the block's own layers in its own order - the output
is the block's, bit for bit, checked at install time - inside one autograd Function. Forward
keeps x~ (patch sums of the input) for every filtered trained conv, the full input only for
trained convs that are not filtered, and each ReLU mask either as its patch counts (one byte per
patch, when only a filtered conv on the same grid reads it) or bit-packed (1/32 of a float32
map); nothing else. Consecutive blocks hand the gradient of the tensor between them on in this form
(the consumer leaves it in a slot of the producer's output and gives autograd a placeholder: a
broadcast zero scalar, nothing allocated), so a chain of blocks never writes a full-resolution gradient between them.

Gradients equal the per-layer filtered implementation's (same formulas, summed in another order).
The block falls back to its per-layer forward (the graph the block itself builds) in eval mode, without
grad, under autocast, or when one of its BatchNorms would normalize with batch statistics.
:func:`install_patch_grid` converts every qualifying block that holds a filtered conv and says
why the others do not qualify. Limits: BatchNorm affine parameters must be frozen (their weight
gradient needs the full-resolution normalized input), activations ReLU / ReLU6 / Hardtanh only,
integer padding only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.grad import conv2d_input, conv2d_weight
from torch.nn.modules.batchnorm import _BatchNorm

from .conv import FilteredConv2d
from .freeze import bn_runs_eval
from .fuse import evaluating
from .functional import (axis_modes, filter_geometry, filtered_backward, grad_patch_sums, input_sums, patch_counts,
                         patch_grid_grads, spread_grid)
from .paths import replace_module
from .registry import registering

__all__ = ["PatchGridBlock", "PatchGridReport", "CHAIN_BLOCKS", "register_chain_block", "install_patch_grid",
           "plan_patch_grid", "mul_counts_", "SAVED_CATEGORY"]

SAVED_CATEGORY = "_gradfilt_saved_category"  # attribute naming the layer type a saved tensor belongs to


# --- the gradient, as carried through a chain ---------------------------------------------------------------

class _Grad:
    """A gradient of shape ``size`` (N, C, H, W) kept as (dense * scale + spread(grid)) * mask; parts may be absent.

    ``grid`` is (N, C, ceil(H / r), ceil(W / r)), constant over each r x r patch: grad_x of the filtered conv
    whose geometry is ``axes`` (stride 1, "same"; r = ``axes[0].patch``);
    ``scale`` a per-channel (C,) factor of ``dense`` and ``mask`` a 0/1 (N, C, H, W) map, both pending
    until the gradient is read (a conv reads patch sums, where they cost a pass over the patch grid).
    A pure grid gradient may carry, instead of its mask, the mask's patch sums ``counts`` (C, N, Hp, Wp), any
    dtype: all a filtered conv reads. The methods return new objects (one gradient may feed two branches);
    ``memo`` (shared by all gradients of one backward) keeps each dense * mask product computed once.
    """

    __slots__ = ("size", "dense", "scale", "grid", "axes", "mask", "counts", "memo", "owned")

    def __init__(self, size, dense: Optional[Tensor] = None, grid: Optional[Tensor] = None, axes=None,
                 mask: Optional[Tensor] = None, scale: Optional[Tensor] = None, counts: Optional[Tensor] = None,
                 memo: Optional[dict] = None, owned: bool = False) -> None:
        self.size, self.dense, self.grid, self.axes = torch.Size(size), dense, grid, axes
        self.mask, self.scale, self.counts = mask, scale, counts
        self.memo = {} if memo is None else memo
        self.owned = owned  # nothing else reads ``grid``: it may be changed in place (the object is then spent)

    def _like(self, **changes) -> "_Grad":
        parts = {k: getattr(self, k) for k in ("dense", "grid", "axes", "mask", "scale", "counts", "memo", "owned")}
        return _Grad(self.size, **(parts | changes))

    @property
    def patch(self) -> int:
        """r of the grid (0 without one)."""
        return 0 if self.axes is None else self.axes[0].patch

    def shared(self) -> "_Grad":
        """The same gradient, for one of several readers: none of them may change its grid in place."""
        return self._like(owned=False)

    def _masked_dense(self) -> Tensor:
        """dense * mask (without the scale), computed once per backward."""
        if self.mask is None:
            return self.dense
        key = (id(self.dense), id(self.mask))
        if key not in self.memo:
            self.memo[key] = (self.dense * self.mask, self.dense, self.mask)  # keep the operands: ids stay unique
        return self.memo[key][0]

    def _check_mask(self) -> None:
        if self.counts is not None:
            raise RuntimeError("a gradient that kept only its mask's patch sums cannot be read at full resolution")

    def full(self) -> Tensor:
        """The gradient at full resolution."""
        self._check_mask()
        out = None
        if self.dense is not None:
            out = self._masked_dense()
            out = out if self.scale is None else out * self.scale.view(1, -1, 1, 1)
        if self.grid is not None:
            spread = spread_grid(self.grid[:, :, None, :, None, :], self.axes)  # the op's own spread
            spread = spread if self.mask is None else spread * self.mask
            out = spread if out is None else out + spread
        if out is None:
            raise RuntimeError("an empty gradient has no value")
        return out

    def masked(self, mask: Tensor) -> "_Grad":
        """The gradient times a 0/1 mask."""
        self._check_mask()
        return self._like(mask=mask if self.mask is None else self.mask * mask)

    def counted(self, counts: Tensor) -> "_Grad":
        """A pure grid gradient on ``counts``' grid times a mask known only by its patch sums (C, N, Hp, Wp)."""
        if self.dense is not None or self.mask is not None or self.counts is not None or self.grid is None:
            raise RuntimeError("only a gradient made of one patch grid can take a mask's patch sums")
        return self._like(counts=counts)

    def scaled(self, scale: Tensor) -> "_Grad":
        """The gradient times a per-channel scale (C,)."""
        grid = self.grid
        if grid is not None:
            grid = grid.mul_(scale.view(1, -1, 1, 1)) if self.owned else grid * scale.view(1, -1, 1, 1)
        dense_scale = None if self.dense is None else scale if self.scale is None else self.scale * scale
        return self._like(grid=grid, scale=dense_scale, owned=grid is not None)

    def __add__(self, other: Optional["_Grad"]) -> "_Grad":
        if other is None:
            return self
        self._check_mask()
        other._check_mask()
        if self.mask is not other.mask:
            return _Grad(self.size, dense=self.full() + other.full(), memo=self.memo)
        same_grid = self.grid is None or other.grid is None or self.patch == other.patch
        both_dense = self.dense is not None and other.dense is not None
        if not same_grid or (both_dense and self.scale is not other.scale):  # sum them at full resolution
            dense = self._like(mask=None).full() + other._like(mask=None).full()
            return _Grad(self.size, dense=dense, mask=self.mask, memo=self.memo)
        if both_dense:
            dense, scale = self.dense + other.dense, self.scale
        else:
            dense, scale = (self.dense, self.scale) if other.dense is None else (other.dense, other.scale)
        if self.grid is None or other.grid is None:
            grid, axes = (self.grid, self.axes) if other.grid is None else (other.grid, other.axes)
        else:
            grid, axes = self.grid + other.grid, self.axes
        owned = (self.owned if other.grid is None else other.owned if self.grid is None else True)
        return _Grad(self.size, dense, grid, axes, self.mask, scale, memo=self.memo, owned=owned)

    def patch_sums(self, axes, groups: int) -> Tensor:
        """Patch sums of the gradient on the output grid of a filtered conv of ``groups``, (C, N, Hp, Wp)."""
        patch = axes[0].patch
        if self.grid is not None and self.patch != patch:  # another grid: read it at full resolution
            return grad_patch_sums(self.full(), axes, groups)
        grid_sums = None
        if self.grid is not None:
            # sum_{p in P} spread(grid)[p] * m[p] = grid[P] * (sum_{p in P} m[p]), in the grid's own layout
            # (patch-major when a filtered conv wrote it: the GEMMs read it as it is, no transposing copy)
            if self.counts is not None:
                counts = self.counts  # (C, N, Hp, Wp), bytes
            elif self.mask is None:
                counts = patch_counts(*self.size[2:], patch, self.grid.dtype, self.grid.device)  # (Hp, Wp)
            else:
                counts = grad_patch_sums(self.mask, axes)  # (C, N, Hp, Wp)
            grid_t = self.grid.transpose(0, 1)  # (C, N, Hp, Wp)
            grid_sums = mul_counts_(grid_t, counts) if self.owned else grid_t * counts.to(grid_t.dtype)
        if self.dense is None:
            return grid_sums
        sums = grad_patch_sums(self._masked_dense(), axes, groups)  # (C, N, Hp, Wp)
        if self.scale is not None:  # a per-channel factor commutes with the patch sums
            sums.mul_(self.scale.view(-1, 1, 1, 1))
        return sums if grid_sums is None else sums.add_(grid_sums)


_CHUNK_BYTES = 2**20  # float copies of byte counts made this many bytes at a time: reused memory, no page faults


def mul_counts_(grid: Tensor, counts: Tensor) -> Tensor:
    """``grid *= counts`` in place: a patch grid (C, N, Hp, Wp) times a mask's patch counts.

    Byte counts are widened to the grid's dtype one batch slice at a time, so the float copies stay
    small (reused memory: no fresh pages to fault in, and a same-dtype product instead of a slow
    mixed-dtype one).

    Args:
        grid: (C, N, Hp, Wp), any layout.
        counts: (C, N, Hp, Wp) in any dtype, or (Hp, Wp).
    """
    if counts.dtype == grid.dtype or counts.dim() < 4:
        return grid.mul_(counts.to(grid.dtype))
    step = max(1, _CHUNK_BYTES // max(1, grid[:, 0].numel() * grid.element_size()))
    for i in range(0, grid.shape[1], step):
        grid[:, i:i + step].mul_(counts[:, i:i + step].to(grid.dtype))
    return grid


def _plus(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return b if a is None else a if b is None else a + b


# --- bit-packed masks ---------------------------------------------------------------------------------------

def _pack(mask: Tensor) -> Tensor:
    """A bool map as bits, 8 per byte (uint8, ceil(numel / 8))."""
    flat = mask.reshape(-1)
    flat = F.pad(flat.to(torch.uint8), (0, -flat.numel() % 8)).view(-1, 8)  # (bytes, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (flat * weights).sum(1, dtype=torch.uint8)


_BIT_TABLES: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _unpack(bits: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`_pack`: the 0/1 map of ``shape``, in ``dtype`` (a gradient multiplies it)."""
    key = (dtype, bits.device)
    if key not in _BIT_TABLES:  # row b: the 8 bits of byte b, lowest first
        byte = torch.arange(256, device=bits.device)
        _BIT_TABLES[key] = (byte[:, None] >> torch.arange(8, device=bits.device) & 1).to(dtype)  # (256, 8)
    flat = _BIT_TABLES[key][bits.long()].view(-1)[: shape.numel()]  # one gather: (bytes, 8) -> (numel,)
    return flat.view(shape)


# --- block programs -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Node:
    """One step of a block program: a layer at ``path`` (relative to the block) or a residual ``add``,
    reading values ``src`` (0 is the block input, node i writes value i + 1)."""

    kind: str  # "layer" or "add"
    path: str
    src: tuple[int, ...]


class _Unsupported(ValueError):
    """Why a block cannot run its backward on the patch grid."""


def _kind(module: nn.Module) -> str:
    """conv / bn / act / identity for a layer a program may hold (see :func:`_layer_problem`)."""
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, _BatchNorm):
        return "bn"
    return "act" if type(module) in (nn.ReLU, nn.ReLU6, nn.Hardtanh) else "identity"


def _layer_problem(path: str, module: nn.Module) -> Optional[str]:
    """Why ``module`` cannot be a layer of a patch-grid program (None if it can)."""
    if isinstance(module, nn.Conv2d):
        if type(module).forward not in (nn.Conv2d.forward, FilteredConv2d.forward):
            return f"{path}: {type(module).__name__} overrides Conv2d.forward"
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return f"{path}: padding {module.padding!r} / {module.padding_mode!r} (integer zero padding only)"
        return None
    if isinstance(module, _BatchNorm):
        if any(p.requires_grad for p in module.parameters()):
            return (f"{path}: the BatchNorm trains its affine parameters (their gradient needs the full-resolution "
                    f"normalized input)")
        if not module.track_running_stats:
            return f"{path}: the BatchNorm keeps no running statistics"
        return None
    if type(module) in (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Identity):
        return None
    return (f"{path or 'the block'}: {type(module).__name__} has no patch-grid backward (known: Conv2d, BatchNorm "
            f"in eval mode, ReLU, ReLU6, Hardtanh, Identity)")


@dataclass
class _Program:
    """A block as the sequence of layers its forward runs."""

    nodes: list[_Node] = field(default_factory=list)

    def layer(self, path: str, module: Optional[nn.Module], src: int) -> int:
        """Append ``module`` (a conv, BatchNorm, activation, Identity or None, or a Sequential or mmcv ConvModule
        of them) reading value ``src``; returns the value it writes."""
        if module is None:
            return src
        steps = _steps(path, module)
        if steps is not None:
            for name, child in steps:
                src = self.layer(_join(path, name), child, src)
            return src
        problem = _layer_problem(path, module)
        if problem:
            raise _Unsupported(problem)
        self.nodes.append(_Node("layer", path, (src,)))
        return len(self.nodes)

    def add(self, a: int, b: int) -> int:
        self.nodes.append(_Node("add", "", (a, b)))
        return len(self.nodes)


def _steps(path: str, module: nn.Module) -> Optional[list[tuple[str, nn.Module]]]:
    """The (child name, layer) steps of a container layer, in the order it runs them: a Sequential's children, or
    an mmcv ``ConvModule``'s (MMSegmentation's conv-norm-act) conv, norm and activation in its ``order``; None for
    any other module."""
    if isinstance(module, nn.Sequential):
        return list(module.named_children())
    if type(module).__name__ != "ConvModule":
        return None
    where = path or "the block"
    if module.with_explicit_padding:
        raise _Unsupported(f"{where}: ConvModule pads with a {type(module.padding_layer).__name__} layer "
                           f"(integer zero padding only)")
    if getattr(module, "efficient_conv_bn_eval_forward", None) is not None:
        raise _Unsupported(f"{where}: ConvModule runs its BatchNorm fused into the conv (efficient_conv_bn_eval)")
    steps = {"conv": ("conv", module.conv),
             "norm": (module.norm_name, module.norm) if module.with_norm else None,
             "act": ("activate", module.activate) if module.with_activation else None}
    return [steps[step] for step in module.order if steps[step] is not None]


def _program(block: nn.Module) -> _Program:
    """The registered program of ``block`` (_Unsupported when its class has none or its layers do not fit)."""
    name = type(block).__name__
    if name not in CHAIN_BLOCKS:
        raise _Unsupported(f"no patch-grid program for {name}; known blocks: {sorted(CHAIN_BLOCKS)}")
    try:
        return CHAIN_BLOCKS[name](block)
    except AttributeError as err:  # e.g. timm's BasicBlock: another layout under the same class name
        raise _Unsupported(f"its layers are not where the {name} program looks for them ({err})") from None


def _layers_of(block: nn.Module, nodes: list[_Node]) -> list[Optional[nn.Module]]:
    """The layer each node of a program runs, looked up on ``block`` now (None for an add)."""
    return [None if n.kind == "add" else block.get_submodule(n.path) for n in nodes]


def _join(path: str, name: str) -> str:
    return ".".join(p for p in (path, name) if p)


Builder = Callable[[nn.Module], _Program]
CHAIN_BLOCKS: dict[str, Builder] = {}


def register_chain_block(class_name: str) -> Callable[[Builder], Builder]:
    """Decorator registering how blocks of class ``class_name`` run, for :class:`PatchGridBlock`.

    Args:
        class_name: the block's class name (torchvision's and gradfilt's blocks match by name).

    The builder takes the block and returns its :class:`_Program`: the layers its forward calls,
    by path, in order, with the residual adds. The install checks the program's output against
    the block's own.
    """
    return registering(CHAIN_BLOCKS, "chain block", class_name)


@register_chain_block("BasicBlock")
def _basic_block(block: nn.Module) -> _Program:
    p = _Program()
    v = p.layer("relu", block.relu, p.layer("bn1", block.bn1, p.layer("conv1", block.conv1, 0)))
    v = p.layer("bn2", block.bn2, p.layer("conv2", block.conv2, v))
    p.layer("relu", block.relu, p.add(v, p.layer("downsample", block.downsample, 0)))
    return p


@register_chain_block("Bottleneck")
def _bottleneck(block: nn.Module) -> _Program:
    p = _Program()
    v = 0
    for i in (1, 2):
        v = p.layer(f"conv{i}", getattr(block, f"conv{i}"), v)
        v = p.layer("relu", block.relu, p.layer(f"bn{i}", getattr(block, f"bn{i}"), v))
    v = p.layer("bn3", block.bn3, p.layer("conv3", block.conv3, v))
    p.layer("relu", block.relu, p.add(v, p.layer("downsample", block.downsample, 0)))
    return p


def _inverted(residual: str) -> Builder:
    def build(block: nn.Module) -> _Program:
        p = _Program()
        v = p.layer("conv", block.conv, 0)
        if getattr(block, residual):
            p.add(0, v)
        return p

    return build


register_chain_block("InvertedResidual")(_inverted("use_res_connect"))  # torchvision MobileNetV2
register_chain_block("MCUNetBlock")(_inverted("residual"))


@register_chain_block("Conv2dNormActivation")  # torchvision
@register_chain_block("ConvModule")  # mmcv (MMSegmentation's heads and backbones)
def _conv_norm_act(block: nn.Module) -> _Program:
    p = _Program()
    p.layer("", block, 0)
    return p


# --- the autograd Function ----------------------------------------------------------------------------------

_ZERO: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _placeholder(shape: torch.Size, like: Tensor) -> Tensor:
    """A zero gradient of ``shape`` that allocates nothing (a broadcast scalar), recognisable by its storage."""
    key = (like.dtype, like.device)
    if key not in _ZERO:
        _ZERO[key] = torch.zeros((), dtype=like.dtype, device=like.device)
    return _ZERO[key].expand(shape)


def _is_placeholder(grad: Tensor) -> bool:
    zero = _ZERO.get((grad.dtype, grad.device))
    return zero is not None and grad.data_ptr() == zero.data_ptr() and all(s == 0 for s in grad.stride())


class _Slot:
    """Where the next block leaves the gradient of a block's output (``node``: id of the output's grad_fn)."""

    __slots__ = ("node", "version", "grad")

    def __init__(self) -> None:
        self.node, self.version, self.grad = 0, 0, None


def _tagged(t: Tensor, category: str) -> Tensor:
    setattr(t, SAVED_CATEGORY, category)
    return t


def _needs(nodes: list[_Node], x_grad: bool, trains: set) -> list[bool]:
    """For every value (0 the input, i + 1 node i's output): does its gradient matter?"""
    needs = [x_grad]
    for i, node in enumerate(nodes):
        needs.append(any(needs[s] for s in node.src) or (i, "weight") in trains or (i, "bias") in trains)
    return needs


def _hands_grid(module: Optional[nn.Module]) -> bool:
    """Whether ``module`` is a filtered conv whose grad_x is its patch grid (stride 1, collapsed kernel, "same")."""
    return (isinstance(module, FilteredConv2d) and module.stride == (1, 1)
            and axis_modes(module.stride, module.dilation, module.patch_size) == ("collapse", "collapse")
            and all(2 * p == d * (k - 1) for p, d, k in zip(module.padding, module.dilation, module.kernel_size)))


def _counted_masks(nodes: list[_Node], modules: list[Optional[nn.Module]]) -> dict[int, int]:
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
        if module is None or _kind(module) != "act" or i + 1 == len(nodes):
            continue
        after = [modules[j] for j in readers.get(i + 1, [])]
        sizes = {m.patch_size for m in after if _hands_grid(m)}
        if not after or len(sizes) != 1 or not all(_hands_grid(m) for m in after) or sizes.pop() ** 2 > 255:
            continue
        r = after[0].patch_size
        v = node.src[0]
        while v > 0 and len(readers[v]) == 1 and modules[v - 1] is not None and _kind(modules[v - 1]) in ("bn", "identity"):
            v = nodes[v - 1].src[0]
        conv = modules[v - 1] if v > 0 else None
        if (len(readers.get(v, [])) == 1 and isinstance(conv, FilteredConv2d) and conv.patch_size == r
                and axis_modes(conv.stride, conv.dilation, r) == ("collapse", "collapse")):
            out[i] = v - 1
    return out


def _forward(nodes: list[_Node], modules: list[Optional[nn.Module]], x: Tensor, needs: list[bool],
             trains: set) -> tuple[Tensor, list[Tensor], list[dict]]:
    """Run a block program (the block's own layers, in its order): (output, tensors to keep, per-node records).

    With autograd on and nothing to keep (``needs`` all False, ``trains`` empty) this is the block's
    per-layer forward.
    """
    values: list[Tensor] = [x]
    saved: list[Tensor] = []
    info: list[dict] = []
    counted = _counted_masks(nodes, modules) if any(needs) else {}
    for i, (node, module) in enumerate(zip(nodes, modules)):
        inp = values[node.src[0]]
        rec: dict = {}
        if node.kind == "add":
            out = inp + values[node.src[1]]
        else:
            out = module(inp)  # an in-place activation is fine: its mask is read from the output
        kind = "add" if module is None else _kind(module)
        if kind == "conv":
            rec["in_shape"] = inp.shape
            if isinstance(module, FilteredConv2d):  # its filtered grad_x too, trained or not
                rec["axes"] = filter_geometry(inp.shape, out.shape, module.kernel_size, module.stride, module.padding,
                                              module.dilation, module.patch_size,
                                              axis_modes(module.stride, module.dilation, module.patch_size))
            if (i, "weight") in trains:  # x~ (1 / r^2 of the input) for a filtered conv; exact BP needs x itself
                saved.append(_tagged(input_sums(inp, rec["axes"], module.groups) if "axes" in rec else inp,
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
                saved.append(_tagged(counts.permute(1, 2, 3, 0).to(torch.uint8).contiguous(), "activation"))
                rec["counts"] = True
            else:
                saved.append(_tagged(_pack(mask), "activation"))  # 1 bit per element
            rec["saved"], rec["shape"] = len(saved) - 1, out.shape
        values.append(out)
        info.append(rec)
    return values[-1], saved, info


class _ChainFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, nodes: list[_Node], modules: list[Optional[nn.Module]], trained: list[tuple[int, str]],
                slot: _Slot, in_slot: Optional[_Slot], x: Tensor, *params: Tensor) -> Tensor:
        trains = set(trained)
        needs = _needs(nodes, x.requires_grad, trains)
        out, saved, info = _forward(nodes, modules, x, needs, trains)
        ctx.nodes, ctx.modules, ctx.trained, ctx.slot, ctx.in_slot = nodes, modules, trained, slot, in_slot
        ctx.info, ctx.needs, ctx.x_shape = info, needs, x.shape
        ctx.save_for_backward(*saved)
        return out.clone() if out is x else out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        nodes, modules, saved, info, needs = ctx.nodes, ctx.modules, ctx.saved_tensors, ctx.info, ctx.needs
        from_slot, ctx.slot.grad = ctx.slot.grad, None
        grad = None if _is_placeholder(grad_out) else _Grad(grad_out.shape, dense=grad_out)
        grad = from_slot if grad is None else grad + from_slot
        grads: dict[int, _Grad] = {len(nodes): grad}
        params: dict[tuple[int, str], Tensor] = {}
        for i in reversed(range(len(nodes))):
            g = grads.pop(i + 1, None)
            if g is None:
                continue
            node, module, rec = nodes[i], modules[i], info[i]
            kind = "add" if module is None else _kind(module)
            ins: list[Optional[_Grad]] = [g] if len(node.src) == 1 else [g.shared()] * len(node.src)
            if kind == "conv":
                ins = [_conv_backward(module, g, rec, saved, needs[node.src[0]], i, ctx.trained, params)]
            elif kind == "bn":  # eval: y = (x - mean) * w / sqrt(var + eps) + b, a per-channel scale
                scale = torch.rsqrt(module.running_var + module.eps)
                ins = [g.scaled(scale if module.weight is None else scale * module.weight)]
            elif kind == "act" and "counts" in rec:
                ins = [g.counted(saved[rec["saved"]].permute(3, 0, 1, 2))]  # (C, N, Hp, Wp) view
            elif kind == "act":
                ins = [g.masked(_unpack(saved[rec["saved"]], rec["shape"], grad_out.dtype))] if "saved" in rec else [None]
            for s, gs in zip(node.src, ins):
                if gs is not None and needs[s]:
                    grads[s] = gs + grads.get(s)
        grad_x = grads.get(0)
        if grad_x is not None and ctx.in_slot is not None:  # the block below reads it from its output's slot
            ctx.in_slot.grad = grad_x + ctx.in_slot.grad
            grad_in = _placeholder(ctx.x_shape, grad_out)
        else:
            grad_in = None if grad_x is None else grad_x.full()
        return (None, None, None, None, None, grad_in, *(params.get(key) for key in ctx.trained))


def _conv_backward(conv: nn.Conv2d, g: _Grad, rec: dict, saved: tuple, need_x: bool, i: int,
                   trained: list[tuple[int, str]], params: dict) -> Optional[_Grad]:
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
            grad_x = (_Grad(rec["in_shape"], grid=grid[:, :, 0, :, 0, :], axes=axes, owned=True) if same
                      else _Grad(rec["in_shape"], dense=spread_grid(grid, axes)))  # strided: full resolution here
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
        grad_x = None if gx is None else _Grad(rec["in_shape"], dense=gx)
    if need_w:
        params[(i, "weight")] = grad_w
    if need_b:
        params[(i, "bias")] = grad_b
    return grad_x


# --- the module and its installer ---------------------------------------------------------------------------

class PatchGridBlock(nn.Module):
    """A block whose backward runs on the patch grid (see the module docstring); forward is the block's own.

    Args:
        block: a block of a registered class (:data:`CHAIN_BLOCKS`); its children become this module's
            children under the same names, so parameter paths and state_dict keys do not change. Its
            layers are looked up by path on every call, so later swaps (folding BatchNorm, a new patch
            size) are seen.

    Raises:
        ValueError (saying why) for a block of an unregistered class or whose layers have no patch-grid
        backward.
    """

    def __init__(self, block: nn.Module) -> None:
        name = type(block).__name__
        nodes = _program(block).nodes  # _Unsupported (a ValueError) says why not
        super().__init__()
        for child_name, child in block.named_children():
            self.add_module(child_name, child)
        self.training = block.training  # the children keep their own flags (a frozen BatchNorm stays in eval)
        self.block_type = name
        self.nodes = nodes

    def _problem(self, x: Tensor, modules: list[Optional[nn.Module]]) -> Optional[str]:
        """Why this call cannot take the patch-grid backward (None if it can)."""
        if not (self.training and torch.is_grad_enabled()):
            return "no training step"
        if torch.is_autocast_enabled(x.device.type):
            return "autocast"
        for node, module in zip(self.nodes, modules):
            if module is not None:
                problem = _layer_problem(node.path, module)
                if problem is None and isinstance(module, _BatchNorm) and not bn_runs_eval(module):
                    problem = f"{node.path}: the BatchNorm normalizes with batch statistics"
                if problem:
                    return problem
        return None

    def forward(self, x: Tensor) -> Tensor:
        modules = _layers_of(self, self.nodes)
        trained = [(i, name) for i, m in enumerate(modules) if isinstance(m, nn.Conv2d)
                   for name in ("weight", "bias") if getattr(m, name) is not None and getattr(m, name).requires_grad]
        if (not trained and not x.requires_grad) or self._problem(x, modules):  # the per-layer forward
            return _forward(self.nodes, modules, x, [False] * (len(self.nodes) + 1), set())[0]
        params = [getattr(modules[i], name) for i, name in trained]
        below = getattr(x, "_gradfilt_slot", None)
        if below is not None and (id(x.grad_fn) != below.node or x._version != below.version):
            below = None  # x was changed after the block below wrote it: hand autograd the full gradient
        slot = _Slot()
        out = _ChainFn.apply(self.nodes, modules, trained, slot, below, x, *params)
        slot.node, slot.version = id(out.grad_fn), out._version
        out._gradfilt_slot = slot
        return out

    def extra_repr(self) -> str:
        return f"block_type={self.block_type}"


@dataclass
class PatchGridReport:
    """What :func:`install_patch_grid` did.

    Attributes:
        blocks: dotted paths of the blocks whose backward now runs on the patch grid.
        per_layer: filtered convs left on the per-layer path -> why.
    """

    blocks: list[str] = field(default_factory=list)
    per_layer: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as text lines."""
        out = [f"patch-grid backward: {', '.join(self.blocks) if self.blocks else 'no block'}"]
        out += [f"per-layer filtered backward: {conv} ({why})" for conv, why in self.per_layer.items()]
        return out


def _block_inputs(model: nn.Module, example_input: Tensor, blocks: dict[str, nn.Module]) -> dict[str, Tensor]:
    """The first input each block sees in one eval-mode forward of ``example_input`` (flags restored)."""
    seen: dict[str, Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, args[0].clone()))
               for name, m in blocks.items()]
    try:
        with evaluating(model):
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


def _check_forward(block: nn.Module, x: Tensor) -> Optional[str]:
    """None if the block's program computes exactly what ``block`` computes on ``x`` (eval mode), else why not."""
    nodes = _program(block).nodes
    with evaluating(block):
        expected = block(x.clone())
        got, _, _ = _forward(nodes, _layers_of(block, nodes), x.clone(), [True] * (len(nodes) + 1), set())
    if got.shape != expected.shape or not torch.equal(got, expected):
        return "its forward is not the recognised layer sequence (outputs differ)"
    return None


def plan_patch_grid(model: nn.Module, example_input: Tensor) -> tuple[dict[str, PatchGridBlock], PatchGridReport]:
    """Find the blocks holding filtered convs that can run their backward on the patch grid; change nothing.

    Args:
        model: the network, filters installed and frozen as it will train.
        example_input: one input batch, to check each block's forward.

    Returns:
        (dotted path -> replacement, report of what qualifies and why the other filtered convs do not).
    """
    candidates: dict[str, nn.Module] = {}
    filtered_in: dict[str, list[str]] = {}  # candidate -> the filtered convs inside it
    reasons: dict[str, str] = {}
    installed = [name for name, m in model.named_modules() if isinstance(m, PatchGridBlock)]
    for name, module in model.named_modules():
        if type(module).__name__ not in CHAIN_BLOCKS or _under(name, [*candidates, *installed]):
            continue
        filtered = [_join(name, n) for n, m in module.named_modules() if isinstance(m, FilteredConv2d)]
        if not filtered:
            continue
        try:
            _program(module)
        except _Unsupported as err:
            for conv in filtered:
                reasons.setdefault(conv, f"{type(module).__name__} {name!r}: {err}")
            continue
        candidates[name], filtered_in[name] = module, filtered
    inputs = _block_inputs(model, example_input, candidates)
    plan: dict[str, PatchGridBlock] = {}
    covered: set[str] = set()
    for name, module in candidates.items():
        filtered = filtered_in[name]
        why = "the example batch never reaches it" if name not in inputs else _check_forward(module, inputs[name])
        if why is None:
            plan[name] = PatchGridBlock(module)
            covered.update(filtered)
        else:
            reasons.update({conv: f"{type(module).__name__} {name!r}: {why}" for conv in filtered})
    report = PatchGridReport(blocks=list(plan))
    for conv, m in model.named_modules():
        if isinstance(m, FilteredConv2d) and conv not in covered and not _under(conv, installed):
            report.per_layer[conv] = reasons.get(conv, "not inside a block with a patch-grid program "
                                                       f"(known: {', '.join(sorted(CHAIN_BLOCKS))})")
    return plan, report


def _under(name: str, parents: list[str]) -> bool:
    """Whether the dotted path ``name`` lies inside one of ``parents``."""
    return any(name.startswith(p + ".") for p in parents)


def install_patch_grid(model: nn.Module, example_input: Tensor) -> PatchGridReport:
    """Swap every qualifying block that holds a filtered conv for a :class:`PatchGridBlock`, in place.

    Args:
        model: the network, filters installed and frozen as it will train.
        example_input: one input batch, to check each block's forward.

    Returns:
        Which blocks run on the patch grid, and why each other filtered conv stays per layer.
    """
    plan, report = plan_patch_grid(model, example_input)
    for name, block in plan.items():
        replace_module(model, name, block)
    return report
