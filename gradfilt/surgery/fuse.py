"""Fold BatchNorm into the convolution that feeds it (the paper's CIFAR fine-tuning set-up).

After ``fuse_bn`` each folded BatchNorm2d is an ``nn.Identity`` and its conv carries
``W' = W * g / sqrt(v + eps)`` and ``b' = (b - m) * g / sqrt(v + eps) + beta`` (g, beta the BN
affine parameters, m, v its running statistics). The model then computes in train mode what
it computed in eval mode before: the BN statistics are frozen into the weights, so BN no
longer keeps its own input for backward and a filtered conv's memory saving is real.

Pairs are found by tracing one forward pass: a BatchNorm2d whose input tensor *is* the output
of a Conv2d. That cannot see a conv output that is also read by a plain tensor op outside any
module, so the fused model is checked against the original (eval mode, the tracing batch)
and everything is rolled back if they differ.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .paths import replace_module

__all__ = ["fuse_bn", "conv_bn_pairs", "evaluating"]


def _example(model: nn.Module, example_input: Optional[Tensor], input_size: Sequence[int]) -> Tensor:
    if example_input is not None:
        return example_input
    param = next(model.parameters(), None)
    return torch.randn(*input_size, device=param.device if param is not None else None,
                       generator=torch.Generator().manual_seed(0)).to(param.dtype if param is not None else None)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients for the ``with`` block; every module's train/eval flag restored.

    Args:
        model: the module.
    """
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def _run_eval(model: nn.Module, x: Tensor) -> Tensor:
    with evaluating(model):
        return model(x)


def conv_bn_pairs(model: nn.Module, example_input: Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm2d that directly consumes a Conv2d output.

    Args:
        model: the model, run once in eval mode without gradients (flags restored).
        example_input: the batch to trace with.
    """
    names = {m: n for n, m in model.named_modules()}
    produced: list[tuple[Tensor, nn.Module]] = []  # tensors kept alive so ids stay unique
    pairs: list[tuple[str, str]] = []

    def conv_out(module: nn.Module, args, output) -> None:
        produced.append((output, module))

    def bn_in(module: nn.Module, args) -> None:
        for tensor, conv in produced:
            if args[0] is tensor and (names[conv], names[module]) not in pairs:
                pairs.append((names[conv], names[module]))

    handles = [m.register_forward_hook(conv_out) for m in names if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(bn_in) for m in names if isinstance(m, nn.BatchNorm2d)]
    try:
        _run_eval(model, example_input)
    finally:
        for h in handles:
            h.remove()
    convs = [c for c, _ in pairs]
    shared = sorted({c for c in convs if convs.count(c) > 1})
    if shared:
        raise ValueError(f"conv(s) {shared} feed more than one BatchNorm; cannot fold")
    return pairs


def _folded_away(bn: nn.Module, name: str) -> nn.Module:
    """What stays of a BatchNorm folded into its conv: nothing (Identity) for a plain BatchNorm2d, the
    activation (and dropout) that timm's ``BatchNormAct2d`` runs after normalizing; any other subclass that
    overrides ``forward`` is refused by name."""
    if type(bn).forward is nn.BatchNorm2d.forward:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(getattr(bn, "act", None), nn.Module):
        after = [m for m in (getattr(bn, "drop", None), bn.act) if m is not None and not isinstance(m, nn.Identity)]
        return nn.Identity() if not after else after[0] if len(after) == 1 else nn.Sequential(*after)
    raise ValueError(f"{name!r} is a {type(bn).__name__}, a BatchNorm2d whose forward does more than normalize; "
                     f"it cannot be folded (known: BatchNorm2d, timm's BatchNormAct2d)")


def fuse_bn(
    model: nn.Module,
    example_input: Optional[Tensor] = None,
    input_size: Sequence[int] = (2, 3, 64, 64),
    atol: float = 1e-4,
) -> list[tuple[str, str]]:
    """Fold every BatchNorm2d that follows a Conv2d (FilteredConv2d included) into it, in place; timm's
    ``BatchNormAct2d`` keeps its activation (the BatchNorm becomes that activation).

    Args:
        model: the model; its conv Parameters are replaced by fused ones (build optimizers after).
        example_input: the batch used to find pairs and to check the result; if None, a seeded
            random batch of ``input_size``.
        input_size: shape of that batch (batch dimension included).
        atol: largest allowed difference between the eval-mode outputs before and after,
            relative to the largest output magnitude.

    Returns:
        The (conv, bn) name pairs that were folded.

    Raises:
        ValueError (model unchanged) if the fused model does not reproduce the original.
    """
    x = _example(model, example_input, input_size)
    pairs = conv_bn_pairs(model, x)
    if not pairs:
        return []
    before = _run_eval(model, x)
    undo = []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError(f"{bn_name!r} keeps no running statistics; nothing to fold")
        undo.append((conv_name, conv, conv.weight, conv.bias, bn_name, bn, _folded_away(bn, bn_name)))
    for conv_name, conv, weight, bias, bn_name, bn, rest in undo:
        conv.weight, conv.bias = fuse_conv_bn_weights(
            weight.detach(), None if bias is None else bias.detach(), bn.running_mean, bn.running_var, bn.eps,
            None if bn.weight is None else bn.weight.detach(), None if bn.bias is None else bn.bias.detach())
        conv.weight.requires_grad_(weight.requires_grad)
        conv.bias.requires_grad_(weight.requires_grad)
        replace_module(model, bn_name, rest)
    after = _run_eval(model, x)
    scale = before.abs().max().clamp_min(1.0)
    if before.shape != after.shape or not torch.allclose(before, after, atol=atol * float(scale), rtol=0):
        for conv_name, conv, weight, bias, bn_name, bn, _ in undo:
            conv.weight, conv.bias = weight, bias
            replace_module(model, bn_name, bn)
        raise ValueError(
            "folding BatchNorm changed the model's output (a conv output is read by more than its BatchNorm?); "
            "the model was left unchanged"
        )
    return pairs

