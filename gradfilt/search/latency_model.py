"""Per-layer backward latency fitted on the latency benchmark's measurements (:class:`LatencyModel`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..cost import conv_cost, linear_cost
from ..surgery.trace import LayerCall

__all__ = ["conv_call", "LatencyModel"]


def conv_call(row: Mapping) -> LayerCall:
    """A LayerCall for a benchmark row's geometry (the conv on the meta device: no memory)."""
    g = {k: int(row[k]) for k in ("c_in", "c_out", "h", "w", "kernel", "stride", "padding", "dilation", "groups")}
    conv = nn.Conv2d(g["c_in"], g["c_out"], g["kernel"], g["stride"], g["padding"], g["dilation"], g["groups"],
                     device="meta")
    out_shape = conv(torch.empty(1, g["c_in"], g["h"], g["w"], device="meta")).shape[1:]
    return LayerCall(str(row.get("case", "")), conv, (g["c_in"], g["h"], g["w"]), tuple(out_shape), False)


@dataclass
class LatencyModel:
    """Backward milliseconds of one layer, fitted per kind on measured conv backwards.

    ``ms = a + b * MFLOPs + c * M elements + d * M weights (strided layers)`` with a, b, c, d >= 0,
    where FLOPs are the cost model's for the layer's backward, elements are those of its input and
    output maps (read and written) and the last term is the weight size of a strided conv (whose
    backward works per stride phase). Kinds: ``vanilla`` (torch's conv backward; also used for a
    frozen layer's input gradient) and ``filtered`` (every patch size). Linear layers cost their
    FLOPs at the vanilla rate. Convs with fewer than ``min_channels`` input channels (an RGB stem,
    whose weight gradient takes a path of its own in torch and which the search does not cover) are
    left out of the fit.

    Attributes:
        coef: kind -> (a, b, c, d).
        batch_size: the batch the measurements were taken at.
        fit_error: kind -> mean absolute relative error on the measurements.
        loo_error: kind -> the same, each measurement predicted by a fit without it.
        points: kind -> number of measurements.
    """

    coef: dict[str, tuple[float, ...]]
    batch_size: int
    fit_error: dict[str, float] = field(default_factory=dict)
    loo_error: dict[str, float] = field(default_factory=dict)
    points: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def _features(call: LayerCall, r: Optional[int], grad_input: bool, trains: bool, batch: int) -> np.ndarray:
        flops = conv_cost(call, r, grad_input, batch, weight=trains)[0]
        elements = batch * (math.prod(call.in_shape) + math.prod(call.out_shape))
        strided = call.module.weight.numel() if max(call.module.stride) > 1 else 0
        return np.array([1.0, flops / 1e6, elements / 1e6, strided / 1e6])

    @classmethod
    def fit(cls, rows: Iterable[Mapping], min_channels: int = 8) -> "LatencyModel":
        """Fit on the latency benchmark's conv rows (``python -m latency --out DIR``: ``DIR/conv.csv``).

        Each row needs the geometry (c_in, c_out, h, w, kernel, stride, padding, dilation, groups),
        batch, patch_size, torch_ms and filtered_ms. A case appears once per patch size; its torch
        time is used once.
        """
        from scipy.optimize import nnls

        data: dict[str, list[tuple[np.ndarray, float]]] = {"vanilla": [], "filtered": []}
        seen, batches = set(), set()
        for row in rows:
            if int(row["c_in"]) < min_channels:
                continue
            call, batch = conv_call(row), int(row["batch"])
            batches.add(batch)
            if row.get("case") not in seen:
                seen.add(row.get("case"))
                data["vanilla"].append((cls._features(call, None, True, True, batch), float(row["torch_ms"])))
            r = int(row["patch_size"])
            data["filtered"].append((cls._features(call, r, True, True, batch), float(row["filtered_ms"])))
        if len(batches) != 1:
            raise ValueError(f"latency rows must share one batch size, got {sorted(batches)}")
        model = cls({}, batches.pop())
        for kind, points in data.items():
            if len(points) < 4:
                raise ValueError(f"fitting the {kind} latency needs at least 4 measurements, got {len(points)}")
            x = np.stack([p[0] for p in points])
            y = np.array([p[1] for p in points])
            scale = np.maximum(x.max(0), 1e-12)
            coef = nnls(x / scale, y)[0] / scale
            model.coef[kind] = tuple(float(v) for v in coef)
            model.fit_error[kind] = float(np.mean(np.abs(x @ coef - y) / y))
            loo = []
            for j in range(len(y)):
                keep = np.arange(len(y)) != j
                c = nnls(x[keep] / scale, y[keep])[0] / scale
                loo.append(abs(x[j] @ c - y[j]) / y[j])
            model.loo_error[kind] = float(np.mean(loo))
            model.points[kind] = len(y)
        return model

    def layer_ms(self, call: LayerCall, r: Optional[int], grad_input: bool, trains: bool) -> float:
        """Predicted backward ms of one layer (0 when it takes no part in the backward)."""
        if not (trains or grad_input):
            return 0.0
        if isinstance(call.module, nn.Linear):
            return self.coef["vanilla"][1] * linear_cost(call, grad_input, self.batch_size, weight=trains) / 1e6
        kind = "filtered" if r is not None and trains else "vanilla"
        return float(np.dot(self.coef[kind], self._features(call, r if trains else None, grad_input, trains,
                                                             self.batch_size)))

    def describe(self) -> str:
        return "; ".join(f"{kind}: ms = {a:.3g} + {b:.3g}/MFLOP + {c:.3g}/M elements + {d:.3g}/M strided weights, "
                         f"fit error {100 * self.fit_error[kind]:.1f} %, "
                         f"leave-one-out {100 * self.loo_error[kind]:.1f} % "
                         f"({self.points[kind]} measurements)" for kind, (a, b, c, d) in self.coef.items())
