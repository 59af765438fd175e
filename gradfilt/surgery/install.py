"""Install gradient filters into a model from a config list.

A spec is ``{path: "backbone.layer4.1", patch_size: 2, type: "basic_block"}``: the dotted
path of a module, the paper's r, and a block type saying what is expected there. Each type
is a handler in :data:`FILTER_TYPES` that checks the module and returns the convs (relative
paths) to swap; add one with :func:`register_filter_type` without touching the others.

All specs are validated and every replacement is built before the first swap, so a bad
spec leaves the model untouched. Swapped layers keep the original Parameter objects.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Iterable, Mapping, Optional, Union

from torch import nn

from ..ops.filtered import FilteredConv2d
from ..ops.geometry import check_patch_size
from .blocks import block_convs
from .paths import join_path, replace_module, resolve
from ..registry import new_registry, registering

__all__ = ["FilterSpec", "FILTER_TYPES", "register_filter_type", "install_filters", "plan_filters", "swap_filters",
           "parse_filter_install"]

Handler = Callable[[nn.Module], list[str]]
FILTER_TYPES: dict[str, Handler] = new_registry("filter_types",
                                                "how a filter spec's type selects the convs under its path")


def register_filter_type(name: str) -> Callable[[Handler], Handler]:
    """Decorator registering a block type for ``install_filters``.

    Args:
        name: the ``type`` value used in specs.

    The handler takes the module found at the spec's path and returns the relative dotted
    paths of the ``nn.Conv2d`` layers to filter ("" for the module itself); it raises
    TypeError when the module is not of its kind.
    """
    return registering(FILTER_TYPES, "filter type", name)


@dataclass(frozen=True)
class FilterSpec:
    """One entry of a ``filter_install`` list.

    Args:
        path: dotted module path ("" is the whole model).
        patch_size: the paper's r.
        type: a key of FILTER_TYPES; "all" filters every Conv2d under the path.
    """

    path: str
    patch_size: int
    type: str = "all"

    @classmethod
    def parse(cls, spec: Union["FilterSpec", Mapping]) -> "FilterSpec":
        """Build a FilterSpec from a mapping, rejecting unknown or missing keys."""
        if isinstance(spec, cls):
            return spec
        if not isinstance(spec, Mapping):
            raise TypeError(f"a filter spec must be a mapping like {{path: ..., patch_size: ...}}, got {spec!r}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(spec) - set(valid))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in filter spec {dict(spec)}; valid keys: {valid}")
        missing = [k for k in ("path", "patch_size") if k not in spec]
        if missing:
            raise ValueError(f"filter spec {dict(spec)} is missing {missing}")
        parsed = cls(**spec)
        check_patch_size(parsed.patch_size)
        if parsed.type not in FILTER_TYPES:
            raise ValueError(f"unknown filter type {parsed.type!r}; valid types: {sorted(FILTER_TYPES)}")
        return parsed


def parse_filter_install(filter_install: Optional[Iterable[Union[FilterSpec, Mapping]]]) -> Optional[list[FilterSpec]]:
    """A method's ``filter_install`` argument as FilterSpecs (None stays None).

    Raises:
        ValueError when it is not a non-empty list of ``{path, patch_size, type}`` entries, or an entry is invalid.
    """
    if filter_install is None:
        return None
    if isinstance(filter_install, (str, dict)) or not filter_install:
        raise ValueError(f"filter_install must be a non-empty list of {{path, patch_size, type}} entries, "
                         f"got {filter_install!r}")
    return [FilterSpec.parse(s if isinstance(s, FilterSpec) else dict(s)) for s in filter_install]


def _convs_under(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def _expect(module: nn.Module, ok: bool, kind: str) -> None:
    if not ok:
        raise TypeError(f"expected {kind}, found {type(module).__name__}")


def _class_is(module: nn.Module, *names: str) -> bool:
    """Match by class name so torchvision, mmcv/mmseg and our own blocks all qualify without imports."""
    return type(module).__name__ in names


@register_filter_type("all")
def _all(module: nn.Module) -> list[str]:
    convs = _convs_under(module)
    _expect(module, bool(convs), "a module containing at least one Conv2d")
    return convs


@register_filter_type("conv")
def _conv(module: nn.Module) -> list[str]:
    _expect(module, isinstance(module, nn.Conv2d), "a Conv2d")
    return [""]


@register_filter_type("cbr")
def _cbr(module: nn.Module) -> list[str]:
    """Conv-norm-act: torchvision Conv2dNormActivation / any Sequential led by a conv, mmcv ConvModule."""
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], nn.Conv2d):
        return ["0"]
    if _class_is(module, "ConvModule") and isinstance(getattr(module, "conv", None), nn.Conv2d):
        return ["conv"]
    _expect(module, False,
            "a conv-norm-act block (Conv2dNormActivation, a Sequential starting with Conv2d, ConvModule)")
    return []


def _known_block(module: nn.Module, kind: str, *names: str) -> list[str]:
    """The convs of a block of one of the classes ``names``, from its program (:mod:`gradfilt.surgery.blocks`)."""
    _expect(module, _class_is(module, *names), kind)
    try:
        return block_convs(module)
    except AttributeError as err:
        raise TypeError(f"{type(module).__name__}'s layers are not where the {type(module).__name__} program "
                        f"looks for them ({err})") from None


@register_filter_type("mcunet_block")
@register_filter_type("inverted_residual")
def _inverted_residual(module: nn.Module) -> list[str]:
    """MobileNetV2 block (torchvision or mmseg InvertedResidual) or gradfilt's MCUNetBlock: all its convs."""
    return _known_block(module, "an InvertedResidual or MCUNetBlock", "InvertedResidual", "MCUNetBlock")


@register_filter_type("basic_block")
def _basic_block(module: nn.Module) -> list[str]:
    return _known_block(module, "a ResNet BasicBlock", "BasicBlock")


@register_filter_type("bottleneck")
def _bottleneck(module: nn.Module) -> list[str]:
    return _known_block(module, "a ResNet Bottleneck", "Bottleneck")


@register_filter_type("resnet_layer")
def _resnet_layer(module: nn.Module) -> list[str]:
    """A ResNet stage: a Sequential (torchvision) or ResLayer (mmseg) of BasicBlock/Bottleneck."""
    blocks = list(module.children()) if isinstance(module, nn.Sequential) else []
    _expect(
        module,
        bool(blocks) and all(_class_is(b, "BasicBlock", "Bottleneck") for b in blocks),
        "a ResNet layer (a Sequential of BasicBlock/Bottleneck)",
    )
    return _convs_under(module)


def plan_filters(model: nn.Module, specs: Iterable[Union[FilterSpec, Mapping]]) -> dict[str, FilteredConv2d]:
    """Check ``specs`` against ``model`` and build every replacement, changing nothing.

    Args:
        model: the model the specs refer to.
        specs: FilterSpec objects or mappings with keys path, patch_size and optional type.

    Returns:
        Dotted conv name -> its FilteredConv2d (sharing the conv's Parameters), in spec order;
        :func:`swap_filters` puts them in place.

    Raises:
        KeyError, TypeError or ValueError when a spec is invalid (unknown key/type/path, type not
        matching the module, patch_size < 1, dilation not divisible by the patch size) or when two
        specs select the same conv.
    """
    plan: dict[str, FilteredConv2d] = {}
    owner: dict[str, int] = {}
    for i, raw in enumerate(specs):
        spec = FilterSpec.parse(raw)
        where = f"filter spec #{i} ({spec.path!r}, type {spec.type!r})"
        module = resolve(model, spec.path)
        try:
            targets = FILTER_TYPES[spec.type](module)
        except TypeError as err:
            raise TypeError(f"{where}: {err}") from None
        for rel in targets:
            name = join_path(spec.path, rel)
            if name in plan:
                raise ValueError(f"{where} selects {name!r}, already selected by filter spec #{owner[name]}")
            try:
                plan[name] = FilteredConv2d.from_conv(resolve(model, name), spec.patch_size)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{where}, layer {name!r}: {err}") from None
            owner[name] = i
    return plan


def swap_filters(model: nn.Module, plan: Mapping[str, FilteredConv2d]) -> None:
    """Put the replacements of :func:`plan_filters` in place.

    Args:
        model: the model the plan was made for.
        plan: dotted conv name -> FilteredConv2d.
    """
    for name, filtered in plan.items():
        replace_module(model, name, filtered)


def install_filters(model: nn.Module, specs: Iterable[Union[FilterSpec, Mapping]]) -> list[str]:
    """Replace the convs selected by ``specs`` with FilteredConv2d, in place (all specs are checked first).

    Args:
        model: the model to modify.
        specs: FilterSpec objects or mappings with keys path, patch_size and optional type.

    Returns:
        The dotted names of the replaced convs, in spec order.

    Raises:
        As :func:`plan_filters`, before any change.
    """
    plan = plan_filters(model, specs)
    swap_filters(model, plan)
    return list(plan)
