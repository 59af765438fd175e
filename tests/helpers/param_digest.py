"""Per-rank digests of a model's parameters, written by the distributed tests' child processes."""

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from gradfilt.methods import GradientFilter


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def digests(model: nn.Module) -> dict:
    """{"params": name -> sha1 of the bytes, "grads": name -> sha1 (trainable ones with a gradient),
    "trainable": [names]}."""

    def sha(t: torch.Tensor) -> str:
        return hashlib.sha1(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()

    params = dict(model.named_parameters())
    return {"params": {n: sha(p) for n, p in params.items()},
            "grads": {n: sha(p.grad) for n, p in params.items() if p.grad is not None},
            "trainable": sorted(n for n, p in params.items() if p.requires_grad)}


def write(model: nn.Module, path: Path) -> None:
    path.write_text(json.dumps(digests(model)))


class RecordingFilter(GradientFilter):
    """GradientFilter that writes each rank's parameter digests after every backward.

    Args:
        out_dir: where ``rank{r}_step{s}.json`` go.
        layers, patch_size: as GradientFilter.
    """

    def __init__(self, out_dir: str, layers: int = 2, patch_size: int = 2) -> None:
        super().__init__(layers=layers, patch_size=patch_size)
        self.out_dir = Path(out_dir)

    def after_backward(self, model: nn.Module, step: int) -> None:
        write(model, self.out_dir / f"rank{rank()}_step{step}.json")
