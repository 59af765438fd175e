"""Small training loops shared by tests."""

import torch
import torch.nn.functional as F
from torch import nn


def fused(arch: str, num_classes: int = 10) -> nn.Module:
    """A gradfilt model in eval mode with BatchNorm folded into its convs (so every conv has a bias)."""
    from gradfilt.surgery.fuse import fuse_bn
    from gradfilt.models import build_model

    model = build_model(arch, num_classes).eval()
    fuse_bn(model)
    return model


def sgd_steps(model: nn.Module, steps: int, image_size: int = 32, classes: int = 10) -> dict[str, torch.Tensor]:
    """Train ``model`` for ``steps`` SGD steps (momentum 0.9, weight decay 5e-4) on random batches of 4;
    returns its state_dict from before the first step (cloned)."""
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9,
                          weight_decay=5e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, image_size, image_size)), torch.randint(0, classes, (4,))).backward()
        opt.step()
    return before
