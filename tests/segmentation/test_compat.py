"""The mmcv.ops stand-in: real point_sample, clear errors for the rest, no-op with full mmcv."""

import importlib
import os
import sys
import types

import pytest
import torch

from segmentation import compat


def test_stand_in_is_installed_on_mmcv_lite():
    assert compat.install() is True
    assert compat.install() is True  # idempotent
    import mmcv.ops

    assert mmcv.ops.point_sample is compat.point_sample


def test_point_sample_hits_pixel_centres_exactly():
    feats = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    ys, xs = torch.tensor([0, 3, 2]), torch.tensor([4, 0, 1])
    points = torch.stack([(xs + 0.5) / 5, (ys + 0.5) / 4], dim=-1).expand(2, 3, 2)  # (N, P, 2) in [0, 1]
    compat.install()
    from mmcv.ops import point_sample

    out = point_sample(feats, points)
    assert out.shape == (2, 3, 3)
    torch.testing.assert_close(out, feats[:, :, ys, xs])
    grid = points.reshape(2, 3, 1, 2)
    assert point_sample(feats, grid).shape == (2, 3, 3, 1)


def test_ops_needing_full_mmcv_fail_clearly_when_used():
    compat.install()
    from mmcv.ops import PSAMask  # importing works, as mmseg needs

    with pytest.raises(compat.MissingOpError, match=r"mmcv.ops.PSAMask needs the compiled ops of full mmcv"):
        PSAMask("collect", (3, 3))
    with pytest.raises(compat.MissingOpError, match="provides only \\['point_sample'\\]"):
        import mmcv.ops

        mmcv.ops.sigmoid_focal_loss(torch.zeros(1), torch.zeros(1))


def test_full_mmcv_is_left_alone(monkeypatch):
    real = types.ModuleType("mmcv.ops")
    monkeypatch.setitem(sys.modules, "mmcv.ops", real)
    assert compat.install() is False and sys.modules["mmcv.ops"] is real
    monkeypatch.delitem(sys.modules, "mmcv.ops")
    monkeypatch.setattr(importlib, "import_module", lambda name: real)  # the compiled import succeeds
    assert compat.install() is False and "mmcv.ops" not in sys.modules


def test_mmseg_deeplabv3_r18_builds_and_runs():
    compat.install()
    import mmseg
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    path = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", "deeplabv3",
                        "deeplabv3_r18-d8_4xb2-80k_cityscapes-512x1024.py")
    cfg = Config.fromfile(path)
    init_default_scope("mmseg")
    bn = dict(type="BN", requires_grad=True)  # SyncBN needs a process group
    cfg.model.backbone.update(init_cfg=None, norm_cfg=bn)
    cfg.model.decode_head.norm_cfg = bn
    cfg.model.auxiliary_head.norm_cfg = bn
    cfg.model.data_preprocessor = None
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), mode="tensor")
    assert out.shape == (2, 19, 8, 8)  # output stride 8, Cityscapes' 19 classes


@pytest.fixture
def hub_dir(tmp_path):
    """torch's hub folder (where downloads are cached) inside the test's folder."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


@pytest.mark.parametrize("scheme", ["http", "open-mmlab"])
def test_a_remote_checkpoint_that_runs_code_is_refused(tmp_path, hub_dir, monkeypatch, scheme):
    import pickle

    from helpers.crafted import code_running_checkpoint, served
    from mmengine.runner import checkpoint
    from mmengine.runner.checkpoint import CheckpointLoader

    compat.install()
    marker = tmp_path / "code_ran"
    code_running_checkpoint(tmp_path / "evil.pth", marker)
    with served(tmp_path) as url:
        name = f"{url}/evil.pth"
        if scheme == "open-mmlab":  # a model-zoo name that resolves to the address
            monkeypatch.setattr(checkpoint, "get_external_models", lambda address=name: {"evil": address})
            name = "open-mmlab://evil"
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            CheckpointLoader.load_checkpoint(name, map_location="cpu")
    assert not marker.exists()


def test_a_remote_mmengine_checkpoint_loads(tmp_path, hub_dir):
    from helpers.crafted import served
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.runner.checkpoint import CheckpointLoader

    compat.install()
    history = HistoryBuffer()
    history.update(2.0)
    torch.save({"state_dict": {"w": torch.ones(2)}, "message_hub": {"loss": history}}, tmp_path / "good.pth")
    with served(tmp_path) as url:
        loaded = CheckpointLoader.load_checkpoint(f"{url}/good.pth", map_location="cpu")
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert loaded["message_hub"]["loss"].mean() == 2.0


class _ReachesFor:
    """Pickled as getattr(owner, name): what a crafted file uses to climb to eval or os.system."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


@pytest.mark.parametrize("name", ["__init__", "update", "__class__"])
def test_getattr_in_a_checkpoint_serves_only_the_history_buffers_statistics(tmp_path, name):
    import pickle

    from mmengine.logging.history_buffer import HistoryBuffer

    torch.save({"x": _ReachesFor(HistoryBuffer, name)}, tmp_path / "crafted.pth")
    with pytest.raises(pickle.UnpicklingError, match=rf"getattr\(.*HistoryBuffer.*'{name}'\)"):
        compat.load_local_checkpoint(str(tmp_path / "crafted.pth"))
    torch.save({"x": _ReachesFor(HistoryBuffer, "mean")}, tmp_path / "fine.pth")
    assert compat.load_local_checkpoint(str(tmp_path / "fine.pth"))["x"] is HistoryBuffer.mean
