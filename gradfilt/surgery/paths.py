"""Dotted module paths: the one path syntax for installing filters and freezing.

A path is what ``model.get_submodule`` takes ("backbone.layer4.0.conv1", "features.17");
the empty string is the model itself. Errors name the deepest module that was found and
its children, so a typo is easy to fix.
"""

from __future__ import annotations

from torch import nn

__all__ = ["resolve", "replace_module", "join_path"]


def resolve(model: nn.Module, path: str) -> nn.Module:
    """The submodule of ``model`` at dotted ``path``, or a KeyError naming the valid children.

    Args:
        model: the root module.
        path: dotted path ("" for the root).
    """
    if not isinstance(path, str):
        raise TypeError(f"a module path must be a dotted string, got {path!r}")
    module, walked = model, []
    for part in path.split(".") if path else []:
        children = dict(module.named_children())
        if part not in children:
            where = ".".join(walked) or f"the root {type(model).__name__}"
            valid = ", ".join(children) or "(none: it is a leaf)"
            raise KeyError(f"no submodule {path!r}: {where!r} has no child {part!r}; its children are: {valid}")
        module = children[part]
        walked.append(part)
    return module


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Swap the submodule at ``path`` for ``new`` in place (setattr on its parent).

    Args:
        model: the root module.
        path: dotted path of the module to replace (not the root).
        new: the replacement.
    """
    if not path:
        raise ValueError("cannot replace the root module in place")
    parent_path, _, name = path.rpartition(".")
    setattr(resolve(model, parent_path), name, new)


def join_path(path: str, name: str) -> str:
    """``path.name``, leaving out empty parts (the model itself is the empty path)."""
    return ".".join(p for p in (path, name) if p)
