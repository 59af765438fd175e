"""docs/adding_a_method.md's template, run as the page shows it: registered, built from a config, applied."""

import re
from pathlib import Path

import pytest
import torch

from gradfilt import fuse_bn
from gradfilt.methods import METHODS, build_method
from gradfilt.models import build_model

PAGE = Path(__file__).resolve().parents[3] / "docs" / "adding_a_method.md"


@pytest.fixture(scope="module")
def template():
    code = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)
    namespace = {"__name__": "last_bias_template"}
    exec(compile(code, str(PAGE), "exec"), namespace)
    yield namespace["LastBias"]
    METHODS.pop("last_bias", None)


def test_the_template_trains_what_it_says(template):
    model = build_model("resnet18", 10)
    x = torch.randn(2, 3, 64, 64)
    fuse_bn(model, x)
    method = build_method({"type": "last_bias", "layers": 2})
    assert isinstance(method, template)
    method.apply(model, x)
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trained == ["fc.bias", "fc.weight", "layer4.1.conv1.bias", "layer4.1.conv2.bias"]
    assert method.tag == "lastbias-2L" and method.config()["init_args"] == {"layers": 2}
    report = method.cost(model, 64)
    assert report.activation_bytes == 0 and report.trainable_params == 512 * 10 + 10 + 2 * 512


def test_the_template_checks_before_it_changes_anything(template):
    with pytest.raises(ValueError, match="layers must be an int >= 1"):
        build_method({"type": "last_bias", "layers": 0})
    model = build_model("resnet18", 10)  # BatchNorm not folded: the convs have no bias
    with pytest.raises(ValueError, match="have no bias: fold BatchNorm first"):
        build_method({"type": "last_bias"}).apply(model, torch.zeros(1, 3, 64, 64))
    assert all(p.requires_grad for p in model.parameters())
