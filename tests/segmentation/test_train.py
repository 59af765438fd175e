"""A few real training iterations of mmseg models with gradfilt's methods, on the Fashion-MNIST set."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gradfilt import FilteredConv2d
from segmentation import compat

compat.install()
from segmentation.datasets import build_fmnist_seg  # noqa: E402  (needs the mmcv.ops stand-in)
from segmentation.runner import MethodRunner  # noqa: E402
from segmentation import test as seg_test  # noqa: E402
from segmentation.train import main as train_main  # noqa: E402

CFG = Path(__file__).resolve().parents[2] / "configs" / "segmentation" / "fmnist_seg"
DEEPLAB = "deeplabv3_r18-d8_1xb8-300_fmnistseg-64x64"
UPERNET = "upernet_r18_1xb8-300_fmnistseg-64x64"


def _options(fmnist_root, data_root, iters=3, **extra):
    opts = {"train_cfg.max_iters": iters, "train_cfg.val_interval": iters, "default_hooks.checkpoint.interval": iters,
            "param_scheduler.0.end": iters, "train_dataloader.batch_size": 4, "val_dataloader.batch_size": 4,
            "test_dataloader.batch_size": 4, **extra}
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        opts.update({f"{loader}.dataset.data_root": str(data_root), f"{loader}.dataset.fmnist_root": str(fmnist_root),
                     f"{loader}.dataset.n_train": 16, f"{loader}.dataset.n_val": 8})
    return [f"{k}={v}" for k, v in opts.items()]


def _train(name, fmnist_root, tmp, work, **extra):
    return train_main([str(CFG / f"{name}.py"), "--work-dir", str(tmp / work),
                       "--cfg-options", *_options(fmnist_root, tmp / "data", **extra)])


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def deeplab(fmnist_root, tmp_path_factory):
    """Vanilla (all layers) for 3 iterations, then filter-5L for 3 iterations from its checkpoint."""
    tmp = tmp_path_factory.mktemp("seg")
    base = _train(DEEPLAB, fmnist_root, tmp, "vanilla")
    filtered = _train(f"{DEEPLAB}_filter5l", fmnist_root, tmp, "filter5l", load_from=tmp / "vanilla" / "iter_3.pth")
    return tmp, base, filtered


def test_method_installs_the_configured_patch_sizes(deeplab):
    _, _, runner = deeplab
    filtered = {n: m.patch_size for n, m in runner.model.named_modules() if isinstance(m, FilteredConv2d)}
    assert filtered == {"decode_head.bottleneck.conv": 3, "decode_head.aspp_modules.0.conv": 3,
                        "decode_head.aspp_modules.1.conv": 3, "decode_head.aspp_modules.2.conv": 6,
                        "decode_head.aspp_modules.3.conv": 9}
    assert all(n.startswith(("decode_head.conv_seg", "decode_head.bottleneck", "decode_head.aspp_modules"))
               for n in _trainable(runner.model))


def test_frozen_weights_are_bit_identical_and_filtered_ones_trained(deeplab):
    tmp, _, runner = deeplab
    start = compat.load_local_checkpoint(str(tmp / "vanilla" / "iter_3.pth"))["state_dict"]
    trainable = _trainable(runner.model)
    training_modules = {n.rsplit(".", 1)[0] for n in trainable}
    for name, value in runner.model.state_dict().items():
        if name in trainable:
            if name.endswith("conv.weight"):
                assert not torch.equal(value, start[name]), name
        elif name.rsplit(".", 1)[0] not in training_modules and name in start:
            assert torch.equal(value, start[name]), name  # frozen params and frozen BN statistics
    loss = runner.message_hub.get_scalar("train/loss").current()
    assert np.isfinite(loss)


def test_checkpoint_reloads_on_torch2_and_evaluates(deeplab, fmnist_root):
    tmp, _, _ = deeplab
    checkpoint = tmp / "filter5l" / "iter_3.pth"
    assert checkpoint.is_file()
    metrics = seg_test.main([str(CFG / f"{DEEPLAB}_filter5l.py"), str(checkpoint), "--work-dir", str(tmp / "test"),
                         "--cfg-options", *_options(fmnist_root, tmp / "data")])
    assert set(metrics) >= {"mIoU", "mAcc", "aAcc"} and 0.0 <= metrics["mIoU"] <= 100.0
    assert list((tmp / "filter5l").rglob("events.out.tfevents.*"))  # TensorBoard next to the text log


def test_calibration_trains_classifiers_and_bn_statistics(deeplab, fmnist_root):
    tmp, _, _ = deeplab
    runner = _train(f"{DEEPLAB}_calibration", fmnist_root, tmp, "calib", iters=2,
                    load_from=tmp / "vanilla" / "iter_3.pth")
    assert _trainable(runner.model) == {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
                                        "auxiliary_head.conv_seg.weight", "auxiliary_head.conv_seg.bias"}
    start = compat.load_local_checkpoint(str(tmp / "vanilla" / "iter_3.pth"))["state_dict"]
    bn = "backbone.layer1.0.bn1"
    assert torch.equal(runner.model.state_dict()[f"{bn}.weight"], start[f"{bn}.weight"])
    assert not torch.equal(runner.model.state_dict()[f"{bn}.running_mean"], start[f"{bn}.running_mean"])


@pytest.mark.slow
@pytest.mark.parametrize("method, tag", [("sparse_update", "sparse-b8-w2-r0.5"), ("tinytl", "tinytl")])
def test_sparse_update_and_tinytl_fuse_bn_after_loading_and_keep_frozen_weights(deeplab, fmnist_root, method, tag):
    """fuse_bn = True: the base checkpoint is loaded before folding, so frozen convs hold exactly the
    folded weights of that checkpoint after training; the method swaps in SparseConv2d layers."""
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS

    from gradfilt.surgery.fuse import fuse_bn
    from gradfilt.ops.sparse import SparseConv2d

    tmp, base, _ = deeplab
    start = tmp / "vanilla" / "iter_3.pth"
    runner = _train(f"{DEEPLAB}_{method}", fmnist_root, tmp, method, iters=2, load_from=start)
    assert runner.method.tag == tag
    sparse = {n: m for n, m in runner.model.named_modules() if isinstance(m, SparseConv2d)}
    assert sparse and not any(isinstance(m, torch.nn.BatchNorm2d) for m in runner.model.modules())
    plain = MODELS.build(base.cfg.model).eval()
    load_checkpoint(plain, str(start), map_location="cpu")
    fuse_bn(plain, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    reference = plain.state_dict()
    for name, module in sparse.items():
        if not module.channels.numel():  # bias only: the weight is the checkpoint's, folded, untouched
            key = name.replace(".block.", ".") + ".weight"
            assert torch.equal(module.weight.detach(), reference[key]), name
    assert np.isfinite(runner.message_hub.get_scalar("train/loss").current())


@pytest.mark.slow
def test_upernet_filter5l_trains(fmnist_root, tmp_path):
    runner = _train(f"{UPERNET}_filter5l", fmnist_root, tmp_path, "upernet", iters=2)
    filtered = {n: m.patch_size for n, m in runner.model.named_modules() if isinstance(m, FilteredConv2d)}
    assert filtered == {"decode_head.fpn_bottleneck.conv": 8, "decode_head.fpn_convs.0.conv": 8,
                        "decode_head.fpn_convs.1.conv": 4, "decode_head.fpn_convs.2.conv": 2,
                        "decode_head.bottleneck.conv": 2}
    assert np.isfinite(runner.message_hub.get_scalar("train/loss").current())


@pytest.mark.parametrize("option, error, message", [
    ("layer_list.filter_install.0.type=block", ValueError, "unknown filter type 'block'; valid types"),
    ("layer_list.filter_install.0.path=decode_head.nope", KeyError, "decode_head.nope"),
    ("layer_list.freeze=[~decode_head.missing]", KeyError, "decode_head.missing"),
    ("layer_list.filters=[]", ValueError, r"unknown layer_list key\(s\) \['filters'\]; valid keys"),
    ("method.type=sparse", ValueError, r"unknown method 'sparse'; valid methods"),
])
def test_config_errors_stop_before_training(fmnist_root, tmp_path, option, error, message):
    with pytest.raises(error, match=message):
        train_main([str(CFG / f"{DEEPLAB}_filter5l.py"), "--work-dir", str(tmp_path / "w"),
                    "--cfg-options", *_options(fmnist_root, tmp_path / "data"), option])
    assert not list((tmp_path / "w").glob("iter_*.pth"))
    if option.startswith(("method.", "layer_list.filters")):  # the config alone is wrong: nothing is made
        assert not (tmp_path / "w").exists()


def test_dataset_is_deterministic_and_labels_follow_the_garments(fmnist_root, tmp_path):
    a = build_fmnist_seg(str(tmp_path / "a"), str(fmnist_root), n_train=6, n_val=2, size=48, seed=3)
    b = build_fmnist_seg(str(tmp_path / "b"), str(fmnist_root), n_train=6, n_val=2, size=48, seed=3)
    for rel in ("img_dir/train/00005.png", "ann_dir/train/00005.png", "ann_dir/val/00001.png"):
        assert np.array_equal(np.array(Image.open(a / rel)), np.array(Image.open(b / rel)))
    image = np.array(Image.open(a / "img_dir/train/00000.png"))
    label = np.array(Image.open(a / "ann_dir/train/00000.png"))
    assert image.shape == (48, 48, 3) and label.shape == (48, 48) and label.max() <= 10
    assert (image[label == 0] == 0).all() and (image[label > 0, 0] >= round(0.2 * 255)).all()
    assert not list(tmp_path.glob(".a.*"))  # no temporary folder left behind


def test_report_reads_work_dirs(deeplab, capsys):
    from segmentation.report import main as report_main, summarize

    tmp, _, _ = deeplab
    rows = {r["run"]: r for r in summarize([tmp / "vanilla", tmp / "filter5l"])}
    assert rows["filter5l"]["trainable_convs"] == 6  # conv_seg + bottleneck + 4 ASPP convs
    assert rows["filter5l"]["method"].startswith("filter-custom-") and rows["vanilla"]["method"] == "all layers"
    assert rows["filter5l"]["backward_flops"] < rows["vanilla"]["backward_flops"] / 10
    assert 0.0 <= rows["filter5l"]["mIoU"] <= 100.0
    assert report_main([str(tmp / "filter5l")]) == 0
    assert f"| filter5l | {rows['filter5l']['method']} | 6 |" in capsys.readouterr().out


def test_the_method_is_applied_before_the_model_is_wrapped(fmnist_root, tmp_path, monkeypatch):
    seen = {}
    wrap = MethodRunner.wrap_model

    def spy(self, model_wrapper_cfg, model):
        seen["filtered"] = sorted(n for n, m in model.named_modules() if isinstance(m, FilteredConv2d))
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        return wrap(self, model_wrapper_cfg, model)

    monkeypatch.setattr(MethodRunner, "wrap_model", spy)
    runner = _train(f"{DEEPLAB}_filter5l", fmnist_root, tmp_path, "w", iters=1)
    assert seen["filtered"] == sorted(n for n, m in runner.model.named_modules() if isinstance(m, FilteredConv2d))
    assert len(seen["filtered"]) == 5 and seen["trainable"] == _trainable(runner.model)


@pytest.mark.slow
def test_ddp_two_cpu_processes_through_torchrun(deeplab, fmnist_root):
    """``torchrun --nproc-per-node 2 ... --launcher pytorch`` without a GPU: gloo, CPU DDP."""
    import json
    import os
    import socket
    import subprocess
    import sys

    tmp, _, _ = deeplab
    out = tmp / "ddp_digests"
    out.mkdir()
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = tmp / "vanilla" / "iter_3.pth"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), str(Path(__file__).resolve().parents[1] / "helpers" / "seg_ddp_train.py"),
           str(out), str(CFG / f"{DEEPLAB}_filter5l.py"), "--work-dir", str(tmp / "ddp"), "--launcher", "pytorch",
           "--cfg-options", *_options(fmnist_root, tmp / "data", iters=2, load_from=start)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert (out / "rank0_wrapper.txt").read_text() == "MMDistributedDataParallel"
    assert ranks[0]["params"] == ranks[1]["params"]  # identical across ranks
    import hashlib

    state = compat.load_local_checkpoint(str(start))["state_dict"]  # where both ranks started
    begin = {n: hashlib.sha1(t.contiguous().numpy().tobytes()).hexdigest() for n, t in state.items()}
    trainable = set(ranks[0]["trainable"])
    assert trainable and all(n.startswith("decode_head.") for n in trainable)
    for name, digest in ranks[0]["params"].items():
        if name in trainable and name.endswith("conv.weight"):
            assert digest != begin[name], name  # trained
        elif name not in trainable:
            assert digest == begin[name], name  # frozen: bit-identical


@pytest.mark.slow
def test_fmnist_seg_script_runs_shortened(fmnist_root, tmp_path):
    """The launcher's stages start from the base run's last checkpoint, whatever --cfg-options max_iters says."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PY": sys.executable, "WORK": str(tmp_path / "work")}
    done = subprocess.run(["bash", "scripts/segmentation/fmnist_seg.sh", "--cfg-options",
                           *_options(fmnist_root, tmp_path / "data", iters=2)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| deeplabv3_r18-d8_1xb8-300_fmnistseg-64x64") == 4
    assert (tmp_path / "work" / "report.csv").is_file()
    assert not list((tmp_path / "work").rglob("iter_300.pth"))


def test_patch_grid_conv_modules_start_from_the_models_own_initialization(tmp_path):
    """With frozen BatchNorm the filtered ConvModules of the DeepLabV3 head run on the patch grid; they are swapped
    when the model is built, before training starts, and still start from the weights the per-layer set-up starts
    from (mmseg initializes a ConvModule's conv in the ConvModule's own ``init_weights``)."""
    from segmentation.train import build_runner, load_config

    convs = ["decode_head.bottleneck.conv"] + [f"decode_head.aspp_modules.{i}.conv" for i in range(4)]
    states, blocks = {}, {}
    for grid in (False, True):
        frozen_bn = ["", "~decode_head.conv_seg", *(f"~{c}" for c in convs)]  # the BatchNorms stay frozen
        # its own experiment name: two runners of one config built within a second would share mmengine's
        # logger (named by config and time), and the second run's log would go to the first's file
        cfg = load_config(str(CFG / f"{DEEPLAB}_filter5l.py"), work_dir=str(tmp_path / str(grid)),
                          cfg_options={"layer_list.freeze": frozen_bn, "method.patch_grid": grid,
                                       "experiment_name": f"patch_grid_{grid}"})
        runner = build_runner(cfg)
        runner._init_model_weights()
        states[grid] = runner.model.state_dict()
        blocks[grid] = runner.method.patch_grid_report and runner.method.patch_grid_report.blocks
    assert blocks[False] is None and sorted(blocks[True]) == sorted(c.rsplit(".", 1)[0] for c in convs)
    assert list(states[True]) == list(states[False])
    assert all(torch.equal(states[True][k], states[False][k]) for k in states[False])
    log = "".join(p.read_text() for p in (tmp_path / "True").glob("*/*.log"))
    assert "patch-grid backward: decode_head.aspp_modules.0, " in log
