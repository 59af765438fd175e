"""The compiled passes (gradfilt/ops/_kernels.cpp via gradfilt/ops/native.py) against plain torch, and
the whole op with the kernels against the op on its pure-PyTorch fallback."""

import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from test_filtered import EXACT, GENERAL, make_case, ref_backward, run_filtered

from gradfilt.ops import native as _native, patch_sum

needs_kernels = pytest.mark.skipif(not _native.available(), reason="gradfilt.ops._kernels is not built")


@pytest.fixture
def fallback(monkeypatch):
    """Run gradfilt.ops.stages on its pure-PyTorch path."""
    monkeypatch.setattr(_native, "_kernels", None)
    assert not _native.usable(torch.zeros(1))


def test_kernels_are_built_where_a_compiler_exists():
    if os.environ.get("GRADFILT_NO_KERNELS"):
        pytest.skip("disabled by GRADFILT_NO_KERNELS")
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler: the package runs on its pure-PyTorch path")
    assert _native.available(), "the package build did not produce gradfilt.ops._kernels (run `make setup` again)"


def integer_map(shape, dtype, seed=0):
    """Small integers: every sum order gives the exact same float result."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-8, 9, shape, generator=g).to(dtype)


# (N, C, H, W, r, start, counts): anchored/divisible, partial last patches, r = 1, offsets into the padding
SUMS = [
    (2, 3, 8, 12, 2, (0, 0), (4, 6)),
    (2, 3, 16, 8, 4, (0, 0), (4, 2)),
    (3, 2, 14, 14, 4, (0, 0), (4, 4)),
    (2, 2, 7, 37, 4, (0, 0), (2, 10)),  # r = 4 rows longer than 32 columns, partial on both axes
    (1, 2, 9, 7, 2, (0, 0), (5, 4)),
    (2, 2, 10, 11, 3, (0, 0), (4, 4)),
    (2, 2, 6, 5, 1, (0, 0), (6, 5)),
    (1, 3, 5, 5, 8, (0, 0), (1, 1)),
    (2, 2, 10, 9, 2, (1, 1), (4, 4)),  # valid 3x3 conv: samples start at pixel 1
    (2, 2, 7, 8, 2, (-1, 2), (5, 3)),  # patches reaching into the zero padding
]


@needs_kernels
@pytest.mark.parametrize("patch_major", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,c,h,w,r,start,counts", SUMS)
def test_patch_sums_match_torch(n, c, h, w, r, start, counts, dtype, patch_major):
    x = integer_map((n, c, h, w), dtype)
    pads = [-start[1], start[1] + counts[1] * r - w, -start[0], start[0] + counts[0] * r - h]
    expected = patch_sum(F.pad(x, pads), r).transpose(0, 1)  # (C, N, nh, nw)
    out = _native.patch_sums(x, r, start, counts, patch_major=patch_major)
    assert out.shape == (c, n, *counts)
    assert (out.permute(1, 2, 3, 0) if patch_major else out).is_contiguous()
    assert torch.equal(out, expected)


@needs_kernels
@pytest.mark.parametrize("simd", [False, True])
@pytest.mark.parametrize("r", [2, 3, 4])
def test_patch_major_sums_tile_many_channels(r, simd):
    """Channel counts around the 16-channel tiles of the patch-major writer: the same bits as channel-major."""
    for c in (1, 15, 16, 17, 40):
        x = torch.randn(3, c, 13, 18, generator=torch.Generator().manual_seed(c))
        counts = (-(-13 // r), -(-18 // r))
        major = _native.patch_sums(x, r, (0, 0), counts, simd=simd, patch_major=True)
        assert torch.equal(major, _native.patch_sums(x, r, (0, 0), counts, simd=simd)), c
        assert major.permute(1, 2, 3, 0).is_contiguous()


@pytest.mark.skipif(not _native.has_avx512(), reason="no AVX-512 on this CPU (or gradfilt.ops._kernels not built)")
@pytest.mark.parametrize("r", [2, 4])
@pytest.mark.parametrize("h,w", [(14, 14), (28, 28), (8, 16), (5, 33), (3, 70), (1, 1), (9, 161)])
def test_avx512_patch_sums_give_the_bits_of_the_portable_loops(h, w, r):
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(2))
    counts = (-(-h // r), -(-w // r))
    fast = _native.patch_sums(x, r, (0, 0), counts)
    assert torch.equal(fast, _native.patch_sums(x, r, (0, 0), counts, simd=False))
    assert torch.allclose(fast, patch_sum(x, r).transpose(0, 1), rtol=1e-5, atol=1e-5)


STREAM_COLUMNS = 64  # the kernels' kStreamColumns: from this row length on they sum rows first


def _tree(parts):
    """(p0 + p1) for two parts, (p0 + p1) + (p2 + p3) for four."""
    return parts[0] + parts[1] if len(parts) == 2 else (parts[0] + parts[1]) + (parts[2] + parts[3])


def _in_order(parts):
    acc = parts[0]
    for p in parts[1:]:
        acc = acc + p
    return acc


def ordered_patch_sums(x, r):
    """Patch sums of r in {2, 4} tiling x from (0, 0), added in the kernels' documented order. Rows of at
    least STREAM_COLUMNS columns: every row's runs of r as a tree (a column past the map a zero in its place),
    then a patch's rows in order ((h0 + h1) + h2) + h3. Shorter rows: columns first (a whole patch's r rows as
    a tree, a partial one's in order), then the runs of column sums as a tree. Element-wise torch adds round
    each sum alone, so the bits are determined."""
    h, w = x.shape[2:]
    nh, nw = -(-h // r), -(-w // r)
    x = F.pad(x, [0, nw * r - w])  # zero columns: the trees' missing values
    patch_rows = [x[:, :, ph * r: min((ph + 1) * r, h)] for ph in range(nh)]
    if w >= STREAM_COLUMNS:
        sums = [_in_order([_tree([rows[:, :, k, i::r] for i in range(r)]) for k in range(rows.shape[2])])
                for rows in patch_rows]
    else:
        sums = []
        for rows in patch_rows:
            parts = [rows[:, :, k] for k in range(rows.shape[2])]
            cols = _tree(parts) if len(parts) == r else _in_order(parts)  # (N, C, nw * r)
            sums.append(_tree([cols[..., i::r] for i in range(r)]))
    return torch.stack(sums, 2).transpose(0, 1)  # (C, N, nh, nw)


@needs_kernels
@pytest.mark.parametrize("simd", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r", [2, 4])
@pytest.mark.parametrize("h,w", [(10, 12), (14, 14), (7, 37), (9, 7), (1, 1), (3, 70), (6, 64), (5, 63), (9, 161)])
def test_patch_sums_add_in_the_documented_order(h, w, r, dtype, simd):
    """The same bits as ordered_patch_sums, on the portable loops and the AVX-512 ones, in both layouts
    (whole and partial patches, short rows and rows streamed over several 32-column steps)."""
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w), dtype=dtype)
    counts = (-(-h // r), -(-w // r))
    expected = ordered_patch_sums(x, r)
    for patch_major in (False, True):
        assert torch.equal(_native.patch_sums(x, r, (0, 0), counts, simd=simd, patch_major=patch_major), expected)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channel-major", "channels-last"])
@pytest.mark.parametrize("h,w,r,uniform", [(8, 12, 2, True), (14, 14, 4, True), (9, 7, 3, True), (7, 6, 2, False),
                                           (6, 10, 5, True)])
def test_spread_matches_gather(h, w, r, uniform, layout, dtype):
    n, c = 2, 3
    hp, wp = -(-h // r), -(-w // r)
    grid = integer_map((n, c, hp, wp), dtype)
    if layout == "channel-major":
        grid = grid.transpose(0, 1).contiguous().transpose(0, 1)
    elif layout == "channels-last":
        grid = grid.contiguous(memory_format=torch.channels_last)
    index_h = torch.arange(h) // r
    index_w = torch.arange(w) // r if uniform else torch.randperm(w, generator=torch.Generator().manual_seed(1)) % wp
    widen = (r, grid.stride(3)) if uniform else None
    out = _native.spread(grid, index_h * grid.stride(2), index_w * grid.stride(3), widen)
    assert out.is_contiguous()
    assert torch.equal(out, grid[:, :, index_h[:, None], index_w[None, :]])


@needs_kernels
def test_spread_from_a_grid_per_stride_phase():
    n, c, phases, hp, wp = 2, 3, (2, 3), 4, 5
    grid = integer_map((n, c, phases[0], hp, phases[1], wp), torch.float32)
    grid = grid.transpose(1, 3).contiguous().transpose(1, 3)  # a non-contiguous 6-D view
    g = torch.Generator().manual_seed(2)
    ph_h, pa_h = torch.randint(0, phases[0], (9,), generator=g), torch.randint(0, hp, (9,), generator=g)
    ph_w, pa_w = torch.randint(0, phases[1], (11,), generator=g), torch.randint(0, wp, (11,), generator=g)
    st = grid.stride()
    out = _native.spread(grid, ph_h * st[2] + pa_h * st[3], ph_w * st[4] + pa_w * st[5], None)
    expected = grid[:, :, ph_h[:, None], pa_h[:, None], ph_w[None, :], pa_w[None, :]]
    assert torch.equal(out, expected)


@needs_kernels
@pytest.mark.parametrize("period", [2, 3, 17])
def test_spread_reuses_rows_with_the_same_source(period):
    # rows take source rows 0, 1, .., period - 1, 0, 1, ...: a row equals the one `period` rows
    # above it (a stride-`period` conv's phases); 17 is past the kernel's look-back of 16 rows
    grid = integer_map((2, 3, period, 5), torch.float32)
    rows = torch.arange(40) % period
    out = _native.spread(grid, rows * grid.stride(2), torch.arange(5), (1, 1))
    assert torch.equal(out, grid[:, :, rows, :])


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", [(3, 3), (3, 5), (1, 1)])  # 3 x 3 has its own compiled loops
def test_kernel_sums_and_repeat_taps(kernel, dtype):
    w = integer_map((6, 4, *kernel), dtype)
    assert torch.equal(_native.kernel_sums(w, 0.25), w.sum((2, 3)) * 0.25)
    tap = integer_map((6, 4), dtype, seed=1)
    out = _native.repeat_taps(tap, w.shape, 0.5)
    assert torch.equal(out, (tap * 0.5)[:, :, None, None].expand(w.shape))


@needs_kernels
def test_bad_arguments_are_refused():
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="contiguous"):
        _native.patch_sums(x.transpose(2, 3), 2, (0, 0), (2, 2))
    with pytest.raises(ValueError, match="float"):
        _native.patch_sums(x.half(), 2, (0, 0), (2, 2))
    grid = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match="outside the grid"):
        _native.spread(grid, torch.tensor([0, 2]) * 2, torch.tensor([0, 1]), None)
    with pytest.raises(ValueError, match="outside the grid"):
        _native.spread(grid, torch.tensor([0, -2]), torch.tensor([0, 1]), None)
    with pytest.raises(ValueError, match="int64"):
        _native.spread(grid, torch.tensor([0, 1], dtype=torch.int32), torch.tensor([0, 1]), None)
    with pytest.raises(ValueError, match=r"col_offsets are not \(w // 2\) \* 1"):
        _native.spread(grid, torch.tensor([0, 2]), torch.tensor([0, 1, 1, 1]), (2, 1))
    with pytest.raises(ValueError, match="widen needs r >= 1"):
        _native.spread(grid, torch.tensor([0, 2]), torch.tensor([0, 0]), (0, 1))
    with pytest.raises(ValueError, match="values"):
        _native.repeat_taps(torch.zeros(5), torch.Size((2, 3, 3, 3)), 1.0)


def run_case(case, dtype=torch.float64):
    n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias, r = case
    x, w, b, gy = make_case(n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias, dtype=dtype)
    return x, w, b, gy, run_filtered(x, w, b, gy, stride, padding, dilation, groups, r)


ALL = {**GENERAL, **EXACT}


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ALL.values(), ids=ALL.keys())
def test_op_equals_its_fallback(case, dtype, monkeypatch):
    *_, native = run_case(case, dtype)
    monkeypatch.setattr(_native, "_kernels", None)
    *_, plain = run_case(case, dtype)
    for a, b in zip(native, plain):
        if a is not None:
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("case", GENERAL.values(), ids=GENERAL.keys())
def test_fallback_matches_slow_reference(case, fallback):
    n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias, r = case
    x, w, b, gy, (y, gx, gw, gb) = run_case(case)
    ref_gx, ref_gw = ref_backward(x, w, gy, stride, padding, dilation, groups, r)
    torch.testing.assert_close(gx, ref_gx)
    torch.testing.assert_close(gw, ref_gw)
    if bias:
        torch.testing.assert_close(gb, gy.sum((0, 2, 3)))
