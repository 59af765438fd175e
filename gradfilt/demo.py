"""Built-in demonstration of the gradient filter on Fashion-MNIST (CPU, about a minute).

A small version of the paper's protocol with a small CNN at 28x28:

1. pretrain every layer with vanilla BP on classes 0-4;
2. fine-tune the last 2 conv layers (found by ``last_convs``) plus a new classifier on
   classes 5-9, everything else frozen with BN in eval mode, with vanilla BP and with
   gradient filters R2 and R4 (same seed, same data, same starting weights);
3. report test accuracy, the bytes autograd keeps for the trained convs (measured with
   ``saved_tensors_hooks``), and how close the filtered weight gradients are to the exact
   ones on one batch (cosine similarity).

TensorBoard logs go to ``runs/demo/<strategy>``. This is a demonstration of the op, not
the paper's experiments: those live in ``classification/`` and ``segmentation/``.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from . import freeze, install_filters, last_convs

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set statistics


def small_cnn(num_classes: int) -> nn.Sequential:
    """Five conv-BN-ReLU blocks (28 -> 14 -> 7), global pool, linear classifier."""

    def cbr(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

    return nn.Sequential(
        cbr(1, 16, 1), cbr(16, 32, 2), cbr(32, 64, 2), cbr(64, 64, 1), cbr(64, 64, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def load_split(root: Path, train: bool, classes: range, limit: int, seed: int) -> tuple[Tensor, Tensor]:
    """Normalized images (N, 1, 28, 28) and labels re-indexed from 0, for ``classes`` only."""
    from torchvision.datasets import FashionMNIST

    raw = root / "FashionMNIST" / "raw"
    if not raw.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST not found under {raw}; run `make data` (or pass --data)")
    ds = FashionMNIST(str(root), train=train, download=False)
    keep = (ds.targets >= classes.start) & (ds.targets < classes.stop)
    idx = keep.nonzero().squeeze(1)
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:limit]]
    images = (ds.data[idx].float().div(255).sub(MEAN).div(STD)).unsqueeze(1)  # (N, 1, 28, 28)
    return images, ds.targets[idx] - classes.start


def run_epoch(model, opt, images, labels, batch_size, seed, desc, writer=None, step=0):
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    model.train()
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False):
        batch = order[start:start + batch_size]
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if writer is not None:
            writer.add_scalar("Train/Loss", loss.item(), step)
        step += 1
    return step


@torch.no_grad()
def accuracy(model, images, labels, batch_size=1000) -> float:
    model.eval()
    correct = sum((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(images), batch_size))
    return 100.0 * correct / len(images)


def saved_bytes_per_layer(model: nn.Module, names: list[str], images: Tensor) -> dict[str, int]:
    """Bytes autograd saves inside each named layer during one forward (parameters not counted)."""
    params = {p.data_ptr() for p in model.parameters()}
    totals, current = dict.fromkeys(names, 0), [None]
    hooks = []
    for name in names:
        layer = model.get_submodule(name)
        hooks.append(layer.register_forward_pre_hook(lambda m, a, name=name: current.__setitem__(0, name)))
        hooks.append(layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, None)))

    def pack(t: Tensor) -> Tensor:
        if current[0] is not None and t.data_ptr() not in params:
            totals[current[0]] += t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        model(images)
    for h in hooks:
        h.remove()
    return totals


def weight_grads(model: nn.Module, names: list[str], images: Tensor, labels: Tensor) -> Tensor:
    model.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    return torch.cat([model.get_submodule(n).weight.grad.flatten() for n in names])


def run(data: Path = Path("data"), pretrain_size: int = 30000, finetune_size: int = 10000, epochs: int = 3,
        batch_size: int = 128, patch_sizes: tuple[int, ...] = (2, 4), trainable_layers: int = 2, seed: int = 0,
        log_dir: Path | None = Path("runs/demo")) -> list[dict]:
    """Run the demonstration and return one result row per strategy.

    Args:
        data: directory holding FashionMNIST/raw.
        pretrain_size: images of classes 0-4 used for pretraining.
        finetune_size: images of classes 5-9 used for fine-tuning.
        epochs: epochs of pretraining and of each fine-tuning run.
        batch_size: batch size of every run.
        patch_sizes: gradient-filter patch sizes to compare against vanilla BP.
        trainable_layers: how many of the last conv layers are fine-tuned.
        seed: seed of initialization, data order and subsets.
        log_dir: TensorBoard directory (None: no logs).
    """
    torch.manual_seed(seed)
    pre_x, pre_y = load_split(data, True, range(0, 5), pretrain_size, seed)
    ft_x, ft_y = load_split(data, True, range(5, 10), finetune_size, seed)
    test_x, test_y = load_split(data, False, range(5, 10), 5000, seed)

    base = small_cnn(5)
    opt = torch.optim.Adam(base.parameters(), lr=1e-3)
    for epoch in range(epochs):
        run_epoch(base, opt, pre_x, pre_y, batch_size, seed + epoch, f"pretrain epoch {epoch + 1}/{epochs}")
    base[-1] = nn.Linear(64, 5)  # new head for the new classes
    names = last_convs(base, trainable_layers, input_size=(1, 1, 28, 28))

    rows, exact_grad = [], None
    for patch_size in (None, *patch_sizes):
        strategy = "vanilla" if patch_size is None else f"filter_r{patch_size}"
        model = copy.deepcopy(base)
        # train the convs and the head; everything else, their BN included, frozen (BN in eval mode)
        freeze(model, ["", *(f"~{n}" for n in names), f"~{len(model) - 1}"])
        if patch_size is not None:
            install_filters(model, [{"path": n, "patch_size": patch_size, "type": "conv"} for n in names])
        model.train()
        grad = weight_grads(model, names, ft_x[:batch_size], ft_y[:batch_size])
        exact_grad = grad if exact_grad is None else exact_grad
        memory = sum(saved_bytes_per_layer(model, names, ft_x[:batch_size]).values())

        writer = SummaryWriter(str(log_dir / strategy)) if log_dir is not None else None
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
        start, step = time.perf_counter(), 0
        for epoch in range(epochs):
            step = run_epoch(model, opt, ft_x, ft_y, batch_size, 100 + seed + epoch,
                             f"{strategy} epoch {epoch + 1}/{epochs}", writer, step)
        seconds = time.perf_counter() - start
        acc = accuracy(model, test_x, test_y)
        if writer is not None:
            writer.add_scalar("Val/Acc", acc, step)
            writer.close()
        rows.append(dict(
            strategy=strategy, patch_size=patch_size or "-", layers=trainable_layers, acc=acc,
            saved_kb=memory / 1024, grad_cosine=F.cosine_similarity(grad, exact_grad, dim=0).item(),
            seconds=seconds,
        ))
    return rows


def format_table(rows: list[dict], batch_size: int) -> str:
    head = ("| strategy | patch_size | #layers | test acc % | saved by trained convs (KB, batch "
            f"{batch_size}) | grad cosine vs vanilla | fine-tune s |\n|---|---|---|---|---|---|---|")
    body = [
        f"| {r['strategy']} | {r['patch_size']} | {r['layers']} | {r['acc']:.1f} | {r['saved_kb']:.1f} | "
        f"{r['grad_cosine']:.3f} | {r['seconds']:.1f} |"
        for r in rows
    ]
    return "\n".join([head, *body])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"), help="directory holding FashionMNIST/raw")
    parser.add_argument("--pretrain-size", type=int, default=30000)
    parser.add_argument("--finetune-size", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--patch-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--trainable-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", type=Path, default=Path("runs/demo"))
    args = parser.parse_args(argv)
    rows = run(args.data, args.pretrain_size, args.finetune_size, args.epochs, args.batch_size,
               tuple(args.patch_sizes), args.trainable_layers, args.seed, args.log_dir)
    print(format_table(rows, args.batch_size))
    print(f"\nTensorBoard logs: tensorboard --logdir {args.log_dir}")


if __name__ == "__main__":
    main()
