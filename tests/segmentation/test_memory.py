"""``python -m segmentation.memory``: real saved bytes of vanilla, per-layer and patch-grid filters on a segmentor."""

from pathlib import Path

import pytest

from segmentation import compat

compat.install()
from segmentation.memory import main  # noqa: E402  (needs the mmcv.ops stand-in)

CFG = Path(__file__).resolve().parents[2] / "configs" / "segmentation" / "fmnist_seg"
FILTER5L = str(CFG / "deeplabv3_r18-d8_1xb8-300_fmnistseg-64x64_filter5l.py")


def test_trained_batchnorms_keep_the_per_layer_bytes_and_frozen_ones_let_the_patch_grid_drop_them(capsys):
    trained = main([FILTER5L, "--batch", "2"])
    assert "per-layer filtered backward: decode_head.bottleneck.conv (ConvModule" in capsys.readouterr().out
    frozen = main([FILTER5L, "--batch", "2", "--frozen-bn"])
    out = capsys.readouterr().out
    assert "BatchNorms frozen" in out and "patch-grid backward: decode_head.aspp_modules.0, " in out
    for saved in (trained, frozen):
        vanilla, per_layer, grid = saved["vanilla"], saved["per-layer filters"], saved["patch-grid filters"]
        assert per_layer["conv"] == grid["conv"] < vanilla["conv"] / 3  # x~ of the same filtered convs
        assert per_layer["batchnorm"] == vanilla["batchnorm"] > 0 and per_layer["activation"] == vanilla["activation"]
    assert trained["patch-grid filters"] == trained["per-layer filters"]  # no block qualifies: nothing changes
    grid, per_layer = frozen["patch-grid filters"], frozen["per-layer filters"]
    assert grid["batchnorm"] == 0 and grid["activation"] * 32 == per_layer["activation"]  # ReLU masks as bits
    assert grid["total"] == grid["conv"] + grid["activation"] + grid["other"]


@pytest.mark.slow
def test_a_config_that_folds_batchnorm_is_measured_folded(capsys):
    saved = main([FILTER5L, "--batch", "2", "--cfg-options", "fuse_bn=True"])
    assert "patch-grid backward: decode_head.aspp_modules.0, " in capsys.readouterr().out
    assert all(values["batchnorm"] == 0 for values in saved.values())  # folded into the convs, as training runs
    grid, per_layer = saved["patch-grid filters"], saved["per-layer filters"]
    assert grid["activation"] * 32 == per_layer["activation"] == saved["vanilla"]["activation"]


def test_a_config_without_filters_is_refused():
    with pytest.raises(ValueError, match="compares the filters of a gradient_filter config; this config's method "
                                         "is vanilla"):
        main([str(CFG / "deeplabv3_r18-d8_1xb8-300_fmnistseg-64x64_vanilla5l.py")])
