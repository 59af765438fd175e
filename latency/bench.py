"""Conv-backward benchmark: ``gradfilt.FilteredConv2d`` against torch's own Conv2d backward.

For every case (a conv geometry at a batch size) and patch size r, on the same tensors in
the same process, after warm-up, all measured in the same alternating rounds (so that a
machine whose speed drifts meanwhile shifts every side alike): the median and spread of

* torch: the autograd backward of ``F.conv2d`` for grad_x and grad_w (``aten.convolution_backward``:
  oneDNN on CPU, cuDNN on CUDA);
* filtered: the autograd backward of ``filtered_conv2d`` for grad_x and grad_w;
* the copy bound: reading g_y once, then writing one fresh g_x-sized map, in one call, the
  memory traffic no filtered backward can avoid;
* the GEMM time: the two matrix products on the patch grid that the filtered backward of a
  collapsed (stride-1) kernel cannot avoid (grad_w and grad_x~ over the batch's patches), run
  by torch on random operands of the same shapes. GEMM + copy is the floor this implementation
  could reach on this machine.

It also reports the bytes each keeps for backward (saved tensors other than the weight) and
the analytical FLOPs ratio from :mod:`gradfilt.cost`. ``--mode step`` times whole fine-tuning
steps (forward, backward, SGD) of a network set up by each of a list of training methods
(:mod:`gradfilt.methods` configs, the YAML files the classification runs use).
"""

from __future__ import annotations

import csv
import functools
import inspect
import itertools
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from gradfilt.cost import conv_cost, measure
from gradfilt.methods import build_method, method_class
from gradfilt.models import build_model
from gradfilt.ops import (FilteredConv2d, axis_modes, filter_geometry, filtered_backward, filtered_conv2d,
                          grad_patch_sums, input_sums, native, patch_grid_grads, patch_major_grid, patch_major_layout,
                          spread_grid, tap_grad)
from gradfilt.patchgrid import mul_counts_
from gradfilt.surgery import LayerCall, fuse_bn, trace_layers

__all__ = ["ConvCase", "table10_cases", "model_cases", "keep_freed_memory", "huge_pages_mode", "THP_ENV", "THP_SETTING",
           "time_rounds", "bench_case", "bench_parts", "parts_supported", "PARTS", "bench_steps", "method_config",
           "with_layers", "write_csv"]

# Table 10 of the paper: (C_in, C_out, H, W), 3x3, stride 1, padding 1, batch 32
TABLE10 = [(128, 128, 120, 160), (256, 256, 60, 80), (512, 512, 30, 40), (512, 512, 14, 14),
           (256, 256, 14, 14), (128, 128, 28, 28), (64, 64, 56, 56)]


@dataclass(frozen=True)
class ConvCase:
    """One conv geometry (input H x W) to benchmark."""

    name: str
    c_in: int
    c_out: int
    h: int
    w: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    dilation: int = 1
    groups: int = 1

    def conv(self) -> nn.Conv2d:
        return nn.Conv2d(self.c_in, self.c_out, self.kernel, self.stride, self.padding, self.dilation, self.groups,
                         bias=False)


def table10_cases() -> list[ConvCase]:
    """The paper's Table 10 cases."""
    return [ConvCase(f"{ci}/{co}/{w}x{h}", ci, co, h, w) for ci, co, h, w in TABLE10]


def model_cases(arch: str, image_size: int = 224) -> list[ConvCase]:
    """The distinct conv geometries of a network at ``image_size`` (traced), named by their first layer."""
    seen: dict[tuple, ConvCase] = {}
    for call in trace_layers(build_model(arch, 1000), input_size=(1, 3, image_size, image_size)):
        conv = call.module
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size[0] != conv.kernel_size[1]:
            continue
        c_in, h, w = call.in_shape
        case = ConvCase(f"{arch}.{call.name}", c_in, conv.out_channels, h, w, conv.kernel_size[0], conv.stride[0],
                        conv.padding[0], conv.dilation[0], conv.groups)
        key = asdict(case) | {"name": None}
        seen.setdefault(tuple(sorted(key.items())), case)
    return list(seen.values())


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> None:
    """Make glibc's malloc serve every block from its heap and never hand freed memory back.

    By default glibc maps each block above its mmap threshold (at most 32 MiB) fresh from the
    kernel and unmaps it on free, so every backward that allocates a large grad_x page-faults
    through all of it again (about 1 us per 4 KiB page here), and trims the heap's top the
    same way. With this setting a freed block is reused by the next allocation of the process,
    torch's own backward included: the same effect as running with the environment variables
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>``, at the cost of never returning
    memory to the system. Call it before the tensors to time are allocated.

    Raises:
        RuntimeError: the C library is not glibc (no mallopt), or it refused a setting.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as err:
        raise RuntimeError(f"keeping freed memory needs glibc's mallopt, which this platform lacks ({err})") from None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)):
        if mallopt(param, value) != 1:
            raise RuntimeError(f"glibc's mallopt refused parameter {param} = {value}")


THP_ENV = "THP_MEM_ALLOC_ENABLE"  # torch's CPU allocator: madvise(MADV_HUGEPAGE) on large blocks when "1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")  # the kernel's mode, the chosen one in []


def huge_pages_mode() -> str:
    """The kernel's transparent huge page mode ("always", "madvise" or "never"), "unavailable" without one."""
    try:
        text = THP_SETTING.read_text()
    except OSError:
        return "unavailable"
    chosen = [word[1:-1] for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else "unavailable"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 2,
                min_time: float = 0.0) -> dict[str, list[float]]:
    """Seconds of each timed call of every function in ``fns``, timed in alternating rounds.

    Each function needs at least ``repeats`` timed calls adding up to ``min_time`` seconds (at
    most 10,000 calls; the last warm-up call estimates how many). Those calls are cut into as
    many rounds as the function needing the fewest calls has, and every round runs each
    function's share back to back, one function after the other. A machine that speeds up or
    slows down while the measurement runs (other tenants of a VM, clock changes) thus shifts
    every function alike and their ratios stay fair. A function that falls short of its
    target after the planned rounds gets more, alone.

    Args:
        fns: the work to time, by name.
        device: where it runs (synchronized around every call on CUDA).
        repeats: at least this many timed calls of each function.
        warmup: untimed calls of each function first.
        min_time: seconds of timed calls of each function, at least.
    """

    def timed(fn: Callable[[], object]) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    needed = {}
    for name, fn in fns.items():
        last = [timed(fn) for _ in range(warmup)][-1:]
        guess = math.ceil(min_time / max(last[0], 1e-6)) if last else 0
        needed[name] = min(10_000, max(repeats, guess))
    rounds = min(needed.values())
    times: dict[str, list[float]] = {name: [] for name in fns}

    def done(t: list[float]) -> bool:
        return len(t) >= 10_000 or (len(t) >= repeats and sum(t) >= min_time)

    for _ in range(rounds):
        for name, fn in fns.items():
            times[name] += [timed(fn) for _ in range(-(-needed[name] // rounds))]
    for name, fn in fns.items():
        while not done(times[name]):
            times[name].append(timed(fn))
    return times


def _spread(times: list[float]) -> tuple[float, float, float]:
    return statistics.median(times), min(times), max(times)


def bench_case(case: ConvCase, batch: int, patch_sizes: Sequence[int], device: torch.device,
               repeats: int, min_time: float = 0.0) -> list[dict]:
    """Rows (one per patch size) comparing torch's and the filtered conv backward on ``case``.

    Args:
        case: the geometry.
        batch: images per step.
        patch_sizes: r values for the filtered side.
        device: where to run.
        repeats: timed calls per measurement (after 2 warm-up calls), at least.
        min_time: seconds of timed calls per measurement, at least (see :func:`time_rounds`).
    """
    conv, x, weight, args, y, grad_y = _case_tensors(case, batch, device)
    # every measurement of the case in the same rounds: torch, the copy bound (read g_y once,
    # write one g_x-sized map), and per r the patch-grid GEMMs and the filtered backward; both
    # backwards through the autograd engine, which adds the same cost to each (about 0.3 ms for
    # a 12 MB grad_x here, measured against calling the backward directly)
    fns: dict[str, Callable[[], object]] = {
        "torch": _autograd_backward(y, x, weight, grad_y),
        "copy": functools.partial(_read_then_write, grad_y, x),
    }
    for r in patch_sizes:
        fns[f"gemm {r}"] = _gemms(case, batch, y.shape[2:], r, device)
        y_f = filtered_conv2d(x, weight, patch_size=r, **args)
        fns[f"filtered {r}"] = _autograd_backward(y_f, x, weight, grad_y)
        if grid_supported(case, r):
            fns[f"grid {r}"] = _grid_backward(x, weight, y, grad_y, args, r)
            fns[f"chain {r}"] = _chain_layer(x, weight, y, args, r)
    times = time_rounds(fns, device, repeats, min_time=min_time)
    t_torch = _spread(times["torch"])
    t_copy = statistics.median(times["copy"])
    mem_torch = measure(conv.to(device), x.detach())["total"]  # bytes autograd keeps, parameters excluded
    call = LayerCall(case.name, conv, (case.c_in, case.h, case.w), tuple(y.shape[1:]), False)
    flops_torch = conv_cost(call, None, True, batch)[0]

    rows = []
    for r in patch_sizes:
        t_gemm = statistics.median(times[f"gemm {r}"])
        t_filt = _spread(times[f"filtered {r}"])
        mem_filt = measure(FilteredConv2d.from_conv(conv, r), x.detach())["total"]
        grid = statistics.median(times[f"grid {r}"]) if f"grid {r}" in times else math.nan
        chain = statistics.median(times[f"chain {r}"]) if f"chain {r}" in times else math.nan
        rows.append({
            "case": case.name, **{k: v for k, v in asdict(case).items() if k != "name"},
            "batch": batch, "patch_size": r, "device": device.type,
            "kernels": "compiled" if native.usable(x) else "pytorch",
            "torch_ms": 1e3 * t_torch[0], "torch_min_ms": 1e3 * t_torch[1], "torch_max_ms": 1e3 * t_torch[2],
            "filtered_ms": 1e3 * t_filt[0], "filtered_min_ms": 1e3 * t_filt[1], "filtered_max_ms": 1e3 * t_filt[2],
            "copy_ms": 1e3 * t_copy,
            "speedup": t_torch[0] / t_filt[0],
            "copy_bound_speedup": t_torch[0] / t_copy,
            "gemm_ms": 1e3 * t_gemm,
            "floor_speedup": t_torch[0] / (t_gemm + t_copy),
            "grid_ms": 1e3 * grid, "grid_speedup": t_torch[0] / grid,
            "chain_ms": 1e3 * chain, "chain_speedup": t_torch[0] / chain, "chain_of_gemm": t_gemm / chain,
            "torch_saved_bytes": mem_torch, "filtered_saved_bytes": mem_filt,
            "memory_ratio": mem_filt / mem_torch,
            "flops_ratio": flops_torch / conv_cost(call, r, True, batch)[0],
        })
    return rows


def grid_supported(case: ConvCase, patch_size: int) -> bool:
    """The filtered backward can hand grad_x on as its patch grid: stride 1 and a kernel that collapses."""
    return case.stride == 1 and axis_modes(1, case.dilation, patch_size) == ("collapse", "collapse")


def _grid_backward(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, grad_y: torch.Tensor, args: dict,
                   patch_size: int) -> Callable[[], object]:
    """grad_w and grad_x on the patch grid from x~ and g_y, by :func:`gradfilt.ops.stages.filtered_backward`
    called directly (the work of a backward that hands the patch grid on, as the paper's own code does)."""
    axes = _axes(x, weight, y, args, patch_size)
    x_sum = input_sums(x.detach(), axes, args["groups"])
    return functools.partial(filtered_backward, grad_y, x_sum, weight.detach(), axes, args["groups"], x.shape,
                             weight.shape, True, True, False, grid_output=True)


def _axes(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, args: dict, patch_size: int):
    """The filter geometry of the case's conv at ``patch_size`` (:func:`gradfilt.ops.stages.filter_geometry`)."""
    return filter_geometry(x.shape, y.shape, tuple(weight.shape[2:]), args["stride"], args["padding"],
                           args["dilation"], patch_size, axis_modes(args["stride"], args["dilation"], patch_size))


def _chain_layer(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, args: dict,
                 patch_size: int) -> Callable[[], object]:
    """The backward of a filtered conv inside a patch-grid chain (as :mod:`gradfilt.patchgrid` runs it): g_y arrives
    as the next layer's patch grid (patch-major, as that layer's GEMM writes it) times its ReLU mask's patch
    counts (kept as bytes, patch-major too), and grad_w and grad_x leave on the patch grid; nothing at full
    resolution.

    The chain multiplies the grid by the counts in place. On maps divisible by r the counts here are all 1
    (the same work, and the grid keeps its values from call to call); with partial edge patches the stage
    also rescales the grid in place, so each call first restores it (one copy of the grid, which the chain
    itself does not make).
    """
    axes = _axes(x, weight, y, args, patch_size)
    x_sum = input_sums(x.detach(), axes, args["groups"])
    n, c_out = y.shape[:2]
    hp, wp = axes[0].n_patches, axes[1].n_patches
    gen = torch.Generator(device="cpu").manual_seed(1)
    grid = torch.randn(n, hp, wp, c_out, generator=gen).to(x.device).permute(0, 3, 1, 2)  # (N, C_out, Hp, Wp)
    counts = torch.ones(n, hp, wp, c_out, dtype=torch.uint8, device=x.device)  # (N, Hp, Wp, C_out), patch-major
    w = weight.detach()
    partial = any(ax.size_out % patch_size for ax in axes)
    source = grid.clone() if partial else None

    def backward() -> object:
        g = grid.copy_(source) if partial else grid
        g_sum = mul_counts_(g.transpose(0, 1), counts.permute(3, 0, 1, 2))  # (C_out, N, Hp, Wp)
        return patch_grid_grads(g_sum, x_sum, w, axes, args["groups"], x.shape, w.shape, True, True, False)

    return backward


def _case_tensors(case: ConvCase, batch: int, device: torch.device):
    """The case's conv, input x, weight, F.conv2d arguments, output y (torch's graph) and a random g_y."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    conv = case.conv()
    x = torch.randn(batch, case.c_in, case.h, case.w, generator=gen).to(device).requires_grad_()
    weight = (torch.randn(conv.weight.shape, generator=gen) * 0.05).to(device).requires_grad_()
    args = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    y = F.conv2d(x, weight, **args)
    grad_y = torch.randn(y.shape, generator=gen).to(device)
    return conv, x, weight, args, y, grad_y


def _autograd_backward(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                       grad_y: torch.Tensor) -> Callable[[], object]:
    """grad_x and grad_w of ``y`` through the autograd engine, keeping the graph for the next call."""
    return functools.partial(torch.autograd.grad, y, (x, weight), grad_y, retain_graph=True)


# the steps of the filtered backward that bench_parts times, in the op's order
PARTS = ("patch sums", "GEMMs", "spread")


def parts_supported(case: ConvCase, patch_sizes: Sequence[int]) -> bool:
    """Whether :func:`bench_parts` can split the backward of ``case``: ungrouped, stride 1, collapsed kernel."""
    return case.groups == 1 and case.stride == 1 and all(
        axis_modes(case.stride, case.dilation, r) == ("collapse", "collapse") for r in patch_sizes)


def bench_parts(case: ConvCase, batch: int, patch_sizes: Sequence[int], device: torch.device, repeats: int,
                min_time: float = 0.0) -> list[dict]:
    """Rows (one per patch size): the filtered backward of ``case`` and each of its parts timed alone.

    The parts are the op's own stages (:func:`gradfilt.ops.stages.grad_patch_sums`,
    :func:`~gradfilt.ops.stages.patch_grid_grads`, :func:`~gradfilt.ops.stages.spread_grid`) on the
    op's own operands: the patch sums of g_y; both GEMMs on the patch grid with what they need
    (theta~, the 1 / r^2, grad_w repeated over the taps); the spread of grad_x~ to full resolution.
    They run in the same alternating rounds as torch's and the
    filtered backward (both through autograd), so *parts ms* is what the op would take if its
    Python, the autograd engine and the caches it shares between steps were free, and *rest ms*
    = filtered - parts is what they cost. (Maps not divisible by r also rescale the patch grid,
    which is not timed.)

    Args:
        case: an ungrouped stride-1 geometry whose kernel collapses (:func:`parts_supported`).
        batch: images per step.
        patch_sizes: r values.
        device: where to run.
        repeats: timed calls per measurement (after 2 warm-up calls), at least.
        min_time: seconds of timed calls per measurement, at least.

    Raises:
        ValueError: ``case`` is grouped, strided, or its kernel does not collapse at some r.
    """
    if not parts_supported(case, patch_sizes):
        raise ValueError(f"{case.name}: --mode parts splits ungrouped stride-1 convs whose kernel collapses "
                         f"(dilation < r); got groups {case.groups}, stride {case.stride}, dilation {case.dilation}, "
                         f"patch sizes {list(patch_sizes)}")
    conv, x, weight, args, y, grad_y = _case_tensors(case, batch, device)
    fns: dict[str, Callable[[], object]] = {"torch": _autograd_backward(y, x, weight, grad_y)}
    for r in patch_sizes:
        y_f = filtered_conv2d(x, weight, patch_size=r, **args)
        fns[f"filtered {r}"] = _autograd_backward(y_f, x, weight, grad_y)
        fns |= {f"{part} {r}": fn for part, fn in _part_fns(x, weight, y_f, grad_y, args, r).items()}
    times = time_rounds(fns, device, repeats, min_time=min_time)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    rows = []
    for r in patch_sizes:
        parts = {part: ms[f"{part} {r}"] for part in PARTS}
        total = sum(parts.values())
        rows.append({"case": case.name, "batch": batch, "patch_size": r, "device": device.type,
                     "kernels": "compiled" if native.usable(x) else "pytorch", "torch_ms": ms["torch"],
                     "filtered_ms": ms[f"filtered {r}"], **{f"{part} ms": t for part, t in parts.items()},
                     "parts_ms": total, "rest_ms": ms[f"filtered {r}"] - total,
                     "speedup": ms["torch"] / ms[f"filtered {r}"], "parts_speedup": ms["torch"] / total})
    return rows


def _part_fns(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, grad_y: torch.Tensor, args: dict,
              patch_size: int) -> dict[str, Callable[[], object]]:
    """The stages of the filtered backward (in :data:`PARTS` order), each on the op's own operands.

    Chained, they give the op's gradients: ``spread`` returns grad_x, ``GEMMs`` (grad_x~, grad_w, None).
    """
    axes = _axes(x, weight, y, args, patch_size)
    x_sum = input_sums(x.detach(), axes, args["groups"])  # what the op's forward keeps
    w = weight.detach()
    g_sum = grad_patch_sums(grad_y, axes, args["groups"])  # (C_out, N, Hp, Wp)
    grid = patch_grid_grads(g_sum.clone(), x_sum, w, axes, args["groups"], x.shape, w.shape, True, True, False)[0]

    partial = any(ax.size_out % patch_size for ax in axes)  # the stage then rescales g_sum in place: a copy

    def gemms() -> object:
        g = g_sum.clone() if partial else g_sum
        return patch_grid_grads(g, x_sum, w, axes, args["groups"], x.shape, w.shape, True, True, False)

    fns = (functools.partial(grad_patch_sums, grad_y, axes), gemms, functools.partial(spread_grid, grid, axes))
    return dict(zip(PARTS, fns))


def _read_then_write(grad_y: torch.Tensor, x: torch.Tensor) -> None:
    """The copy bound: read g_y once, then write one fresh g_x-sized map, in one call as a backward does."""
    grad_y.sum()
    torch.empty_like(x).fill_(0.0)


def _gemms(case: ConvCase, batch: int, out_size: Sequence[int], patch_size: int,
           device: torch.device) -> Callable[[], None]:
    """The two patch-grid GEMMs of a collapsed kernel (grad_w and grad_x~, per group) on random operands.

    Ungrouped stride-1 convs: G and X in the op's own layout (:func:`gradfilt.ops.stages.patch_major_layout`) and
    its products (:func:`~gradfilt.ops.stages.tap_grad`, :func:`~gradfilt.ops.stages.patch_major_grid`);
    otherwise one batched product per gradient.
    """
    g, co, ci = case.groups, case.c_out // case.groups, case.c_in // case.groups
    hp, wp = -(-out_size[0] // patch_size), -(-out_size[1] // patch_size)
    b = batch * hp * wp  # patches in the batch
    theta = torch.randn(g, co, ci, device=device)  # (G, C_out / G, C_in / G)
    if g == 1 and case.stride == 1:
        major = patch_major_layout(theta, 1)  # the layout of the op's sums of float32 maps on this device

        def operand(channels: int) -> torch.Tensor:  # (C, B), laid out as the op's patch sums
            return torch.randn(b, channels, device=device).T if major else torch.randn(channels, b, device=device)

        grad, x_sum = operand(co), operand(ci)

        def gemms() -> None:
            tap_grad(grad, x_sum)  # grad_w: (C_out, C_in)
            patch_major_grid(grad, theta[0], batch, hp, wp)  # grad_x~: (B, C_in) memory
        return gemms
    x_sum = torch.randn(g, ci, b, device=device)  # (G, C_in / G, B)
    grad = torch.randn(g, co, b, device=device)  # (G, C_out / G, B)

    def gemms() -> None:
        torch.bmm(grad, x_sum.transpose(1, 2))  # grad_w: (G, C_out / G, C_in / G)
        torch.bmm(grad.transpose(1, 2), theta)  # grad_x~: (G, B, C_in / G)

    return gemms


_WARMUP_STEPS = 2


def method_config(path: Path) -> dict:
    """The method config in a YAML file: a classification config (``model: method: ...``), a file with a
    top-level ``method:``, or the method itself (``class_path`` / ``type``).

    Args:
        path: the YAML file.
    """
    import yaml

    if not Path(path).is_file():
        raise ValueError(f"no method config file at {path}")
    data = yaml.safe_load(Path(path).read_text()) or {}
    for key in ("model", "method"):  # a classification config nests it as model.method
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not (isinstance(data, dict) and ("class_path" in data or "type" in data)):
        raise ValueError(f"{path} holds no method config (model.method or a mapping with class_path / type)")
    return data


def takes_layers(config: dict) -> bool:
    """Whether the method of ``config`` has a ``layers`` argument (sparse update and TinyTL do not)."""
    name = config.get("class_path", config.get("type"))
    return "layers" in inspect.signature(method_class(name)).parameters


def with_layers(config: dict, layers: Union[None, int, str]) -> dict:
    """``config`` with its ``layers`` argument set to ``layers`` (None, or a method without ``layers``
    such as sparse update or TinyTL: unchanged)."""
    if layers is None or not takes_layers(config):
        return config
    if "class_path" in config:
        return {**config, "init_args": {**(config.get("init_args") or {}), "layers": layers}}
    return {**config, "layers": layers}


def bench_steps(arch: str, layers: Union[None, int, str], methods: Sequence[dict], batch: int, image_size: int,
                device: torch.device, repeats: int, fuse: bool = False) -> list[dict]:
    """Median milliseconds of one fine-tuning step per method, split into forward / backward / SGD step,
    with the method's backward FLOPs (cost model) and the bytes autograd really kept in one step.

    The set-ups (one model each) are timed in alternating rounds (:func:`time_rounds`, one step
    of each per round after 2 warm-up steps each, which ``_step`` records too), so that they are
    compared on the same machine state.

    Args:
        arch: mobilenet_v2 or resnet18 (any gradfilt.models arch).
        layers: sets each method's ``layers`` (the paper's #Layers, or ``all``); None keeps the configs' own.
        methods: method configs (``{class_path, init_args}`` or ``{type, ...}``), one set-up each.
        batch, image_size: the input batch.
        device: where to run.
        repeats: timed steps of each set-up.
        fuse: fold BatchNorm into the convs before the method is applied, as the fine-tuning recipes
            do (sparse update and TinyTL need it: they train the folded biases).
    """
    images = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1)).to(device)
    built = [build_method(with_layers(config, layers)) for config in methods]
    parts: dict[str, list[tuple[float, float, float]]] = {}
    steps: dict[str, Callable[[], None]] = {}
    costs: dict[str, tuple[int, int]] = {}
    for method in built:
        if method.tag in parts:
            raise ValueError(f"two step set-ups share the tag {method.tag!r}")
        torch.manual_seed(0)
        model = build_model(arch, 1000)
        if fuse:
            fuse_bn(model.eval(), torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)))
        if method.calibration_batches:  # random batches: the timing needs layers, not well-chosen ones
            method.calibrate(model, [(images[:2].cpu(), labels[:2].cpu())] * method.calibration_batches)
        method.apply(model, torch.zeros(1, 3, image_size, image_size))
        model.to(device).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        flops = method.cost(model, image_size, batch_size=batch).backward_flops
        costs[method.tag] = (flops, measure(model, images)["total"])
        opt.zero_grad(set_to_none=True)
        parts[method.tag] = []
        steps[method.tag] = functools.partial(_step, model, method, opt, itertools.count(), images, labels, device,
                                              parts[method.tag])
    time_rounds(steps, device, repeats, warmup=_WARMUP_STEPS)
    rows = []
    for method in built:
        recorded = parts[method.tag]
        med = [statistics.median(t[i] for t in recorded[_WARMUP_STEPS:]) for i in range(3)]
        rows.append({"arch": arch, "set": layers, **method.fields(), "batch": batch, "image_size": image_size,
                     "device": device.type, **{f"{k}_ms": 1e3 * v for k, v in zip(("forward", "backward", "sgd"), med)},
                     "step_ms": 1e3 * sum(med), "backward_flops": costs[method.tag][0],
                     "saved_bytes": costs[method.tag][1]})
    return rows


def _step(model: nn.Module, method, opt: torch.optim.Optimizer, counter: Iterator[int], images: torch.Tensor,
          labels: torch.Tensor, device: torch.device, record: list[tuple[float, float, float]]) -> None:
    """One SGD step with the method's ``start_step`` (timed as SGD: e.g. moving the trained channels) and
    ``after_backward`` (timed as backward) hooks; appends its (forward, backward, SGD) seconds to ``record``."""
    step = next(counter)
    start = time.perf_counter()
    method.start_step(model, opt, step)
    _sync(device)
    hooks = time.perf_counter() - start
    marks = [time.perf_counter()]
    loss = F.cross_entropy(model(images), labels)
    _sync(device)
    marks.append(time.perf_counter())
    loss.backward()
    method.after_backward(model, step)
    _sync(device)
    marks.append(time.perf_counter())
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)
    marks.append(time.perf_counter())
    record.append((marks[1] - marks[0], marks[2] - marks[1], marks[3] - marks[2] + hooks))


def write_csv(rows: list[dict], path: Path) -> None:
    """Rows to CSV (columns of the first row), through a part file renamed into place: a failed or killed
    write leaves the previous file as it was."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
