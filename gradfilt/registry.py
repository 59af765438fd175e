"""Every name registry of gradfilt, and the one rule they share.

A registry is a dict filled by a decorator (``@register_method("name")``, ``@register_arch``, ...); a name
taken twice by different things is an error, and every "unknown X" error lists the valid names. Each
registry is made by :func:`new_registry`, which records it in :data:`REGISTRIES`, so this module is the
index: ``python -c "import gradfilt, gradfilt.registry as r; print(r.describe())"`` lists them all (an
application's registries, such as the classification datasets, appear once it is imported).

Library registries (module, decorator, what they hold):

* ``filter_types`` (:mod:`gradfilt.surgery.install`, ``register_filter_type``): how a filter spec's
  ``type`` picks the convs under its path;
* ``blocks`` (:mod:`gradfilt.surgery.blocks`, ``register_block``): the layer program of each known
  block class (its convs, BatchNorms, activations and residual adds, in forward order);
* ``archs`` (:mod:`gradfilt.models`, ``register_arch``): the networks ``build_model`` makes;
* ``methods`` (:mod:`gradfilt.methods`, ``register_method``): the training methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

__all__ = ["Registry", "REGISTRIES", "new_registry", "registering", "describe"]

T = TypeVar("T")


@dataclass(frozen=True)
class Registry:
    """One registry as the index lists it."""

    name: str
    holds: str
    entries: dict


REGISTRIES: dict[str, Registry] = {}


def new_registry(name: str, holds: str) -> dict:
    """A new, empty registry dict, recorded in :data:`REGISTRIES` under ``name``.

    Args:
        name: the registry's name in the index (``methods``, ``archs``, ...).
        holds: what it holds, one line.
    """
    if name in REGISTRIES:
        raise ValueError(f"registry {name!r} already exists (holding {REGISTRIES[name].holds})")
    entries: dict = {}
    REGISTRIES[name] = Registry(name, holds, entries)
    return entries


def registering(registry: dict[str, T], kind: str, name: str) -> Callable[[T], T]:
    """A decorator that stores what it decorates in ``registry`` under ``name`` and returns it unchanged.

    Args:
        registry: the dict of registered things.
        kind: what they are, for the error message ("filter type", "arch", ...).
        name: the key.

    Raises:
        ValueError (when decorating) if ``name`` is already registered.
    """

    def decorate(value: T) -> T:
        if name in registry:
            held = registry[name]
            raise ValueError(f"{kind} {name!r} is already registered (by {getattr(held, '__qualname__', held)!r})")
        registry[name] = value
        return value

    return decorate


def describe() -> str:
    """The index as text: one line per registry with what it holds and its names."""
    return "\n".join(f"{r.name}: {r.holds}; {len(r.entries)} registered: {', '.join(sorted(r.entries))}"
                     for r in REGISTRIES.values())
