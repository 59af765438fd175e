"""The benchmark's bookkeeping (memory, FLOPs ratio, cases, CLI); no timing is asserted."""

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gradfilt import filtered_conv2d
from gradfilt.cost import estimate_configured, measure
from gradfilt.surgery.fuse import fuse_bn
from gradfilt.methods import build_method
from gradfilt.models import build_model
import latency.__main__ as latency_main
from latency import bench
from latency.__main__ import main
from latency.bench import (PARTS, ConvCase, _part_fns, bench_case, bench_parts, bench_steps, method_config,
                           model_cases, table10_cases, time_rounds, with_layers, write_csv)

REPO = Path(__file__).resolve().parents[2]


def test_table10_cases_are_the_papers():
    cases = table10_cases()
    assert [(c.c_in, c.c_out, c.w, c.h) for c in cases][:2] == [(128, 128, 160, 120), (256, 256, 80, 60)]
    assert all((c.kernel, c.stride, c.padding) == (3, 1, 1) for c in cases) and len(cases) == 7


def test_model_cases_are_distinct_traced_geometries():
    cases = model_cases("resnet18")
    assert cases[0].name == "resnet18.conv1" and (cases[0].kernel, cases[0].stride, cases[0].h) == (7, 2, 224)
    keys = {(c.c_in, c.c_out, c.h, c.kernel, c.stride) for c in cases}
    assert len(keys) == len(cases) and (512, 512, 7, 3, 1) in keys
    assert any(c.groups == c.c_in > 1 for c in model_cases("mobilenet_v2"))  # depthwise layers kept


def test_bench_case_memory_and_flops_ratio():
    rows = bench_case(ConvCase("t", 8, 16, 12, 10), batch=2, patch_sizes=[2, 4], device=torch.device("cpu"),
                      repeats=1)
    assert [r["patch_size"] for r in rows] == [2, 4]
    for row, (hp, wp) in zip(rows, [(6, 5), (3, 3)]):
        assert row["torch_saved_bytes"] == 2 * 8 * 12 * 10 * 4  # torch keeps the input
        assert row["filtered_saved_bytes"] == 2 * 8 * hp * wp * 4  # the patch sums only
        assert row["flops_ratio"] > 1 and row["speedup"] > 0 and row["copy_ms"] > 0 and row["gemm_ms"] > 0
        assert row["floor_speedup"] == pytest.approx(row["torch_ms"] / (row["gemm_ms"] + row["copy_ms"]))
        assert row["grid_speedup"] == pytest.approx(row["torch_ms"] / row["grid_ms"])  # grad_x on the patch grid
        assert row["chain_speedup"] == pytest.approx(row["torch_ms"] / row["chain_ms"])  # g_y on the grid too
        assert row["chain_of_gemm"] == pytest.approx(row["gemm_ms"] / row["chain_ms"])
    assert rows[1]["flops_ratio"] > rows[0]["flops_ratio"]


def test_cli_with_a_case_file(tmp_path, capsys):
    spec = tmp_path / "cases.csv"
    spec.write_text("name,c_in,c_out,h,w,kernel,stride,padding\ndw,8,8,9,9,3,2,1\n")
    assert main(["--cases", str(spec), "--batch", "2", "--patch-sizes", "2", "--repeats", "1",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| dw | 2 |" in out and "R2: median speedup" in out
    assert "x | - | - |" in out and "patch grid" not in out  # a strided case has no patch-grid output
    rows = list(csv.DictReader(open(tmp_path / "out" / "conv.csv")))
    assert rows[0]["case"] == "dw" and (tmp_path / "out" / "conv.png").stat().st_size > 0


def test_bench_parts_splits_the_filtered_backward():
    rows = bench_parts(ConvCase("t", 8, 16, 12, 10), batch=2, patch_sizes=[2, 4], device=torch.device("cpu"),
                       repeats=1)
    assert [r["patch_size"] for r in rows] == [2, 4]
    for row in rows:
        parts = [row[f"{part} ms"] for part in PARTS]
        assert all(t > 0 for t in parts) and row["torch_ms"] > 0
        assert row["parts_ms"] == pytest.approx(sum(parts))
        assert row["rest_ms"] == pytest.approx(row["filtered_ms"] - row["parts_ms"])
        assert row["parts_speedup"] == pytest.approx(row["torch_ms"] / row["parts_ms"])
    for case in (ConvCase("s2", 8, 8, 12, 12, stride=2), ConvCase("dw", 8, 8, 12, 12, groups=8),
                 ConvCase("d4", 8, 8, 12, 12, padding=4, dilation=4)):
        with pytest.raises(ValueError, match=f"{case.name}: --mode parts splits ungrouped stride-1 convs"):
            bench_parts(case, 2, [2], torch.device("cpu"), 1)


@pytest.mark.parametrize("r,size", [(2, 8), (4, 8), (3, 7)])
def test_the_timed_parts_are_the_ops_own_steps(r, size):
    # chained, the stages give the op's own gradients: they time its real operands and layouts, not look-alikes
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, size, size, generator=gen, requires_grad=True)
    weight = torch.randn(5, 6, 3, 3, generator=gen, requires_grad=True)
    grad_y = torch.randn(2, 5, size, size, generator=gen)
    args = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    y = filtered_conv2d(x, weight, patch_size=r, **args)
    grad_x, grad_w = torch.autograd.grad(y, (x, weight), grad_y)
    parts = _part_fns(x, weight, y, grad_y, args, r)
    assert list(parts) == list(PARTS)
    grids = -(-size // r)
    assert parts["patch sums"]().shape == (5, 2, grids, grids)
    for _ in range(2):  # the GEMM stage may be timed many times: the same result each time
        assert torch.allclose(parts["GEMMs"]()[1], grad_w, rtol=1e-5, atol=1e-5)
    assert torch.allclose(parts["spread"](), grad_x, rtol=1e-5, atol=1e-6)


def test_parts_mode_skips_the_cases_it_cannot_split(tmp_path, capsys):
    spec = tmp_path / "cases.csv"
    spec.write_text("name,c_in,c_out,h,w,kernel,stride,padding\nflat,8,8,8,8,3,1,1\ns2,8,8,9,9,3,2,1\n")
    assert main(["--mode", "parts", "--cases", str(spec), "--batch", "2", "--patch-sizes", "2", "--repeats", "1",
                 "--min-time", "0", "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "| flat | 2 |" in captured.out and "skips 1 grouped, strided or dilated cases: s2" in captured.err
    assert [r["case"] for r in csv.DictReader(open(tmp_path / "out" / "parts.csv"))] == ["flat"]
    spec.write_text("name,c_in,c_out,h,w,kernel,stride,padding\ns2,8,8,9,9,3,2,1\n")
    with pytest.raises(SystemExit):
        main(["--mode", "parts", "--cases", str(spec), "--out", str(tmp_path / "out")])
    assert "none of the given cases is one" in capsys.readouterr().err


def test_step_mode_splits_the_step(tmp_path, capsys):
    methods = [{"type": "vanilla"}, {"class_path": "GradientFilter", "init_args": {"patch_size": 2}}]
    rows = bench_steps("resnet18", 2, methods, batch=2, image_size=64, device=torch.device("cpu"), repeats=1)
    assert [(row["method"], row["patch_size"]) for row in rows] == [("vanilla-2L", "-"), ("R2-2L", 2)]
    for row in rows:
        assert row["step_ms"] == pytest.approx(row["forward_ms"] + row["backward_ms"] + row["sgd_ms"])
    configs = REPO / "configs" / "classification" / "methods"
    dynamic = tmp_path / "dynamic.yaml"  # the benchmark's 1000-class head alone has 5 MB of gradients
    dynamic.write_text((configs / "dynamic_sparse.yaml").read_text().replace("memory_budget: 256KB",
                                                                              "memory_budget: 6MB"))
    assert main(["--mode", "step", "--archs", "mobilenet_v2", "--layers", "2", "4", "--methods",
                 str(configs / "r4.yaml"), str(configs / "sparse_update.yaml"), str(configs / "tinytl.yaml"),
                 str(dynamic), "--fuse-bn", "--batch", "2", "--image-size", "64",
                 "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| mobilenet_v2 | 2 | R4-2L |" in out and "| mobilenet_v2 | 4 | R4-4L |" in out
    # the methods without layers are the same set-up at every N: one row each
    assert out.count("| sparse-b8-w2-r0.5 |") == out.count("| tinytl |") == 1
    assert out.count("| dyn-rotation-u0.02-6MB |") == 1


def test_step_mode_costs_each_set_up_as_training_would():
    methods = [{"type": "vanilla"}, {"type": "sparse_update", "n_bias_update": 4, "n_weight_update": 2,
                                      "weight_update_ratio": 0.5}, {"type": "tinytl"},
               {"type": "dynamic_sparse", "memory_budget": None, "manual_weight_idx": [49, 51]},
               {"type": "emp", "alpha": 0.25}]
    rows = bench_steps("mobilenet_v2", 2, methods, batch=2, image_size=64, device=torch.device("cpu"), repeats=1,
                       fuse=True)
    for config, row in zip(methods, rows):
        model = build_model("mobilenet_v2", 1000).eval()
        fuse_bn(model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        method = build_method(with_layers(config, 2))
        method.apply(model, torch.zeros(1, 3, 64, 64))
        assert row["set"] == 2 and row["method"] == method.tag
        assert row["backward_flops"] == estimate_configured(model, 64, batch_size=2).backward_flops
        assert row["saved_bytes"] == measure(model.train(), torch.randn(2, 3, 64, 64))["total"]


def test_step_mode_reads_method_configs(tmp_path):
    (tmp_path / "bare.yaml").write_text("type: gradient_filter\npatch_size: 2\n")
    (tmp_path / "none.yaml").write_text("model:\n  lr: 0.1\n")
    assert method_config(tmp_path / "bare.yaml") == {"type": "gradient_filter", "patch_size": 2}
    assert method_config(REPO / "configs" / "classification" / "methods" / "r4.yaml")["class_path"] == "GradientFilter"
    with pytest.raises(ValueError, match="holds no method config"):
        method_config(tmp_path / "none.yaml")


@pytest.mark.parametrize("argv, message", [
    (["--cases", "vgg"], "unknown case set 'vgg': valid sets are"),
    (["--patch-sizes", "0"], "must be >= 1"),
    (["--min-time", "-1"], "--min-time must be >= 0"),
    (["--mode", "step", "--layers", "some"], "must be an int >= 0 or 'all', got 'some'"),
    (["--mode", "step", "--archs", "bogus"], "--archs: unknown ['bogus']; valid: ['lenet', 'mcunet'"),
    (["--image-size", "0"], "--image-size must be >= 8 (pixels), got 0"),
])
def test_cli_errors(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu(capsys):
    with pytest.raises(SystemExit):
        main(["--device", "cuda"])
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_time_rounds_alternates_until_every_function_has_min_time():
    calls = []

    def work(name, seconds):
        def fn():
            calls.append(name)
            time.sleep(seconds)
        return fn

    times = time_rounds({"slow": work("slow", 0.01), "fast": work("fast", 0.001)}, torch.device("cpu"), repeats=4,
                        warmup=1, min_time=0.05)
    assert calls[:2] == ["slow", "fast"]  # one warm-up call each
    assert all(len(t) >= 4 and sum(t) >= 0.05 for t in times.values())
    assert len(calls) == 2 + len(times["slow"]) + len(times["fast"])
    # at least 4 rounds (the repeats), each a slow call and then a block of the ~48 fast calls' share
    timed = calls[2:]
    starts = [i for i, name in enumerate(timed) if name == "slow" and (i == 0 or timed[i - 1] == "fast")]
    assert len(starts) >= 4 and timed[0] == "slow"
    assert timed[1:starts[1]].count("fast") >= 2  # the fast one runs in blocks
    untimed = time_rounds({"a": work("a", 0.0)}, torch.device("cpu"), repeats=3, warmup=0)
    assert len(untimed["a"]) == 3  # no min_time, no warm-up: exactly the repeats


# In a child process: keep_freed_memory() changes malloc for the whole process it runs in.
_FAULTS = """
import resource, sys, torch
from latency.bench import keep_freed_memory
if sys.argv[1] == "heap":
    keep_freed_memory()
def faults_of_a_fresh_64mb_map():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_fresh_64mb_map()
print(min(faults_of_a_fresh_64mb_map() for _ in range(3)))
"""


def _faults(mode, env=None):
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                         env=None if env is None else os.environ | env)
    return int(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert _faults("default") > pages // 2  # glibc maps a block this large fresh each time: every page faults
    assert _faults("heap") < pages // 100  # the freed block is reused


_HUGE = pytest.mark.skipif(bench.huge_pages_mode() not in ("always", "madvise"),
                           reason="the kernel's transparent huge pages are off or absent")


@pytest.mark.slow
@_HUGE
def test_huge_pages_fault_once_per_huge_page():
    """With THP_MEM_ALLOC_ENABLE=1 a fresh 64 MiB block faults far less than once per 4 KiB page (mostly once
    per 2 MiB; the kernel may still back parts of it with small pages)."""
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert _faults("default", {bench.THP_ENV: "1"}) < pages // 10


@pytest.mark.slow
@_HUGE
def test_cli_malloc_hugepages_runs_in_a_child_and_is_recorded(tmp_path):
    spec = tmp_path / "cases.csv"
    spec.write_text("name,c_in,c_out,h,w\nc,4,4,8,8\n")
    env = {k: v for k, v in os.environ.items() if k != bench.THP_ENV}
    run = subprocess.run([sys.executable, "-m", "latency", "--cases", str(spec), "--batch", "2", "--patch-sizes", "2",
                          "--repeats", "1", "--min-time", "0", "--malloc", "hugepages", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "malloc: hugepages" in run.stderr
    assert [r["malloc"] for r in csv.DictReader(open(tmp_path / "out" / "conv.csv"))] == ["hugepages"]


def test_cli_malloc_hugepages_without_them_is_an_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(bench.THP_ENV, raising=False)
    monkeypatch.setattr(latency_main, "huge_pages_mode", lambda: "never")
    with pytest.raises(SystemExit) as exc:
        latency_main.main(["--cases", "table10", "--malloc", "hugepages", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "transparent huge pages are 'never'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_malloc_heap_is_recorded(tmp_path):
    spec = tmp_path / "cases.csv"
    spec.write_text("name,c_in,c_out,h,w\nc,4,4,8,8\n")
    run = subprocess.run([sys.executable, "-m", "latency", "--cases", str(spec), "--batch", "2", "--patch-sizes", "2",
                          "--repeats", "1", "--min-time", "0", "--malloc", "heap", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "malloc: heap" in run.stderr
    assert [r["malloc"] for r in csv.DictReader(open(tmp_path / "out" / "conv.csv"))] == ["heap"]


def test_step_mode_on_a_timm_cnn():
    methods = [{"type": "vanilla"}, {"type": "gradient_filter", "patch_size": 4}]
    rows = bench_steps("timm/mobilenetv3_small_050", 2, methods, batch=2, image_size=64, device=torch.device("cpu"),
                       repeats=1)
    assert [row["method"] for row in rows] == ["vanilla-2L", "R4-2L"] and all(row["step_ms"] > 0 for row in rows)


def test_step_mode_trains_every_layer_with_layers_all(capsys, tmp_path):
    configs = REPO / "configs" / "classification" / "methods"
    assert main(["--mode", "step", "--archs", "lenet", "--layers", "all", "--methods", str(configs / "vanilla.yaml"),
                 str(configs / "emp.yaml"), "--batch", "4", "--image-size", "28", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| lenet | all | vanilla-all |" in out and "| lenet | all | emp0.5-all |" in out


@pytest.mark.parametrize("text, message", [("name,c_in,c_out,h,w\n", "and 0 rows"),
                                           ("name,c_in,c_out\nx,3,4\n", "has the columns ['c_in', 'c_out', 'name']"),
                                           ("name,c_in,c_out,h,w,colour\nx,3,4,8,8,red\n", "'colour'"),
                                           ("name,c_in,c_out,h,w\nx,3,4,8,eight\n", "every value but the name")])
def test_a_bad_case_file_fails_before_the_previous_results_are_touched(tmp_path, capsys, text, message):
    (tmp_path / "conv.csv").write_text("previous results\n")
    (tmp_path / "cases.csv").write_text(text)
    with pytest.raises(SystemExit):
        main(["--cases", str(tmp_path / "cases.csv"), "--out", str(tmp_path)])
    assert message in capsys.readouterr().err
    assert (tmp_path / "conv.csv").read_text() == "previous results\n"


def test_results_are_written_through_a_part_file(tmp_path):
    (tmp_path / "conv.csv").write_text("previous results\n")
    with pytest.raises(ValueError, match="no rows to write"):
        write_csv([], tmp_path / "conv.csv")
    write_csv([{"a": 1, "b": 2}], tmp_path / "conv.csv")
    assert (tmp_path / "conv.csv").read_text().splitlines() == ["a,b", "1,2"]
    assert not list(tmp_path.glob("*.part"))
