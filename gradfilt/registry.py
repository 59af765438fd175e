"""One rule for every name registry of gradfilt (filter types, chain blocks, archs, datasets): a dict filled
by a decorator, where a name taken twice is an error."""

from __future__ import annotations

from typing import Callable, TypeVar

__all__ = ["registering"]

T = TypeVar("T")


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
            raise ValueError(f"{kind} {name!r} is already registered")
        registry[name] = value
        return value

    return decorate
