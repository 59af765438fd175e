"""The filtered conv op against an independent slow reference, exact cases and memory."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks

from gradfilt import FilteredConv2d, filtered_conv2d, patch_mean, patch_sum

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ----------------------------------------------------------------------------------------------
# Slow reference, written from the equations (docs/paper.md "Method" + the op's documented rules for
# stride phases and dilation), with explicit loops over pixels and taps. Float64 throughout.
# ----------------------------------------------------------------------------------------------
def ref_patch_means(gy, r):
    n, c, h, w = gy.shape
    out = torch.zeros(n, c, math.ceil(h / r), math.ceil(w / r), dtype=gy.dtype)
    for p in range(out.shape[2]):
        for q in range(out.shape[3]):
            out[:, :, p, q] = gy[:, :, p * r:(p + 1) * r, q * r:(q + 1) * r].mean((2, 3))
    return out


def dense_weight(w, groups, c_in):
    """(C_out, C_in, kh, kw) with zeros outside each output channel's group."""
    c_out, c_in_g = w.shape[:2]
    dense = torch.zeros(c_out, c_in, *w.shape[2:], dtype=w.dtype)
    for co in range(c_out):
        g = co // (c_out // groups)
        dense[co, g * c_in_g:(g + 1) * c_in_g] = w[co]
    return dense


def ref_backward(x, w, gy, stride, pad, dilation, groups, r):
    """Returns (grad_x, grad_w) of the filtered backward; pad = padding before the first pixel."""
    x, w, gy = x.double().cpu(), w.double().cpu(), gy.double().cpu()
    n, c_in, size_h, size_w = x.shape
    c_out, c_in_g, kh, kw = w.shape
    gbar = ref_patch_means(gy, r)
    hp, wp = gbar.shape[2:]
    axes = []
    for s, p, d, k in zip(stride, pad, dilation, (kh, kw)):
        c = (k - 1) // 2
        axes.append(dict(s=s, p=p, d=d, c=c, offset=c * d - p, grid=(s == 1 and d >= r)))
    ah, aw = axes
    dense = dense_weight(w, groups, c_in)

    def x_at(i, j):
        if 0 <= i < size_h and 0 <= j < size_w:
            return x[:, :, i, j]
        return torch.zeros(n, c_in, dtype=x.dtype)

    # grad_w[co, ci, u, v] = sum_{n, t} g~y[n, co, t] * x[n, ci, sample(t, u)], t over whole patches;
    # a grid axis samples the tap's own position, a collapsed axis the centre tap's.
    grad_dense = torch.zeros_like(dense)
    for u in range(kh):
        for v in range(kw):
            for th in range(hp * r):
                for tw in range(wp * r):
                    i = th * ah["s"] - ah["p"] + (u if ah["grid"] else ah["c"]) * ah["d"]
                    j = tw * aw["s"] - aw["p"] + (v if aw["grid"] else aw["c"]) * aw["d"]
                    grad_dense[:, :, u, v] += torch.einsum("no,ni->oi", gbar[:, :, th // r, tw // r], x_at(i, j))
    grad_w = torch.stack([grad_dense[co, (co // (c_out // groups)) * c_in_g:][:c_in_g] for co in range(c_out)])

    def patch_of(a, u, ax):
        """Patch whose g~y reaches input pixel a through tap u, or None."""
        if ax["grid"]:  # the exact output of tap u, on the patch grid
            out = a + ax["p"] - u * ax["d"]
            patch = math.floor(out / r)
            return patch if 0 <= patch < (hp if ax is ah else wp) else None
        if (a + ax["p"] - u * ax["d"]) % ax["s"]:
            return None  # tap u never reaches this stride phase
        centre_out = math.floor((a - ax["offset"]) / ax["s"])
        return min(max(math.floor(centre_out / r), 0), (hp if ax is ah else wp) - 1)

    grad_x = torch.zeros_like(x)
    for a in range(size_h):
        for b in range(size_w):
            for u in range(kh):
                for v in range(kw):
                    ph, pw = patch_of(a, u, ah), patch_of(b, v, aw)
                    if ph is not None and pw is not None:
                        grad_x[:, :, a, b] += gbar[:, :, ph, pw] @ dense[:, :, u, v]
    return grad_x, grad_w


def run_filtered(x, w, b, gy, stride, padding, dilation, groups, r):
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    b = None if b is None else b.clone().requires_grad_(True)
    y = filtered_conv2d(x, w, b, stride, padding, dilation, groups, patch_size=r)
    y.backward(gy)
    return y, x.grad, w.grad, None if b is None else b.grad


def make_case(n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias, device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c_in, *size, generator=g, dtype=torch.float64)
    w = torch.randn(c_out, c_in // groups, *kernel, generator=g, dtype=torch.float64)
    b = torch.randn(c_out, generator=g, dtype=torch.float64) if bias else None
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    to = dict(device=device, dtype=dtype)
    return x.to(**to), w.to(**to), None if b is None else b.to(**to), gy.to(**to)


# (n, c_in, c_out, (H, W), kernel, stride, padding, dilation, groups, bias, r)
GENERAL = {
    "resnet 3x3": (2, 4, 6, (9, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1, False, 2),
    "3x3 r3 odd": (2, 3, 5, (10, 11), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, 3),
    "3x3 r4 batch1": (1, 4, 4, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, 4),
    "3x3 stride2": (2, 4, 6, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1), 1, False, 2),
    "1x1 stride2": (2, 4, 6, (8, 9), (1, 1), (2, 2), (0, 0), (1, 1), 1, False, 2),
    "stem 7x7 s2": (2, 3, 4, (13, 12), (7, 7), (2, 2), (3, 3), (1, 1), 1, False, 2),
    "stem 7x7 s2 r4": (1, 3, 4, (16, 16), (7, 7), (2, 2), (3, 3), (1, 1), 1, False, 4),
    "depthwise 3x3": (2, 6, 6, (9, 9), (3, 3), (1, 1), (1, 1), (1, 1), 6, False, 2),
    "depthwise 3x3 s2": (2, 6, 6, (10, 9), (3, 3), (2, 2), (1, 1), (1, 1), 6, False, 2),
    "depthwise 5x5 mult2": (2, 4, 8, (9, 9), (5, 5), (1, 1), (2, 2), (1, 1), 4, True, 2),
    "depthwise 7x7 s2": (2, 4, 4, (11, 11), (7, 7), (2, 2), (3, 3), (1, 1), 4, False, 3),
    "grouped": (2, 4, 6, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), 2, True, 2),
    "dilation 2 < r 4": (2, 4, 4, (10, 10), (3, 3), (1, 1), (2, 2), (2, 2), 1, False, 4),
    "dilation 4 grid r2": (2, 3, 4, (11, 10), (3, 3), (1, 1), (4, 4), (4, 4), 1, True, 2),
    "aspp d6 r3": (2, 3, 4, (13, 14), (3, 3), (1, 1), (6, 6), (6, 6), 1, False, 3),
    "aspp d6 r2 depthwise": (2, 4, 4, (12, 11), (3, 3), (1, 1), (6, 6), (6, 6), 4, False, 2),
    "valid padding": (2, 3, 4, (10, 9), (3, 3), (1, 1), (0, 0), (1, 1), 1, True, 2),
    "valid padding r1": (2, 3, 4, (8, 9), (3, 3), (1, 1), (0, 0), (1, 1), 1, True, 1),
    "mixed axes": (2, 3, 4, (9, 10), (1, 3), (1, 2), (0, 1), (1, 1), 1, False, 2),
    "patch larger than map": (2, 4, 4, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1, False, 8),
    # patch grids of >= 64 patches take the per-image GEMM path (divisible: strided-add patch sums, tiled spread)
    "3x3 r2 large grid": (2, 4, 6, (16, 18), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, 2),
    "3x3 r4 large grid": (2, 3, 5, (32, 36), (3, 3), (1, 1), (1, 1), (1, 1), 1, False, 4),
    "3x3 r2 large grid odd": (2, 3, 4, (17, 19), (3, 3), (1, 1), (1, 1), (1, 1), 1, False, 2),
    "valid r2 large grid": (2, 3, 4, (18, 20), (3, 3), (1, 1), (0, 0), (1, 1), 1, False, 2),
    "1x1 r3 large grid": (2, 4, 6, (24, 27), (1, 1), (1, 1), (0, 0), (1, 1), 1, True, 3),
}


@pytest.mark.parametrize("case", GENERAL.values(), ids=GENERAL.keys())
def test_matches_slow_reference(case):
    n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias, r = case
    x, w, b, gy = make_case(n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias)
    y, gx, gw, gb = run_filtered(x, w, b, gy, stride, padding, dilation, groups, r)
    assert torch.equal(y, F.conv2d(x, w, b, stride, padding, dilation, groups))
    ref_gx, ref_gw = ref_backward(x, w, gy, stride, padding, dilation, groups, r)
    torch.testing.assert_close(gx, ref_gx)
    torch.testing.assert_close(gw, ref_gw)
    if bias:
        torch.testing.assert_close(gb, gy.sum((0, 2, 3)))


def exact_with_filtered_grad(x, w, b, gy, stride, padding, dilation, groups, r):
    """Plain conv autograd fed with g~y (patch means broadcast back to full size)."""
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    g_mean = ref_patch_means(gy, r).to(gy.dtype)
    g_tilde = g_mean.repeat_interleave(r, 2).repeat_interleave(r, 3)[:, :, : y.shape[2], : y.shape[3]]
    return torch.autograd.grad(y, (x, w), g_tilde)


EXACT = {
    "1x1 s1 r2": (2, 4, 6, (8, 9), (1, 1), (1, 1), (0, 0), (1, 1), 1, True, 2),
    "1x1 s2 r2": (2, 4, 6, (9, 8), (1, 1), (2, 2), (0, 0), (1, 1), 1, False, 2),
    "1x1 s2 r3 odd": (2, 4, 6, (11, 7), (1, 1), (2, 2), (0, 0), (1, 1), 1, False, 3),
    "1x1 s3": (1, 3, 5, (10, 11), (1, 1), (3, 3), (0, 0), (1, 1), 1, False, 2),
    "1x1 grouped s2": (2, 4, 6, (8, 8), (1, 1), (2, 2), (0, 0), (1, 1), 2, False, 2),
    "r1 3x3": (2, 4, 6, (7, 9), (3, 3), (1, 1), (1, 1), (1, 1), 1, True, 1),
    "r1 depthwise 5x5": (2, 4, 4, (9, 8), (5, 5), (1, 1), (2, 2), (1, 1), 4, False, 1),
    "r1 valid": (2, 3, 4, (8, 9), (3, 3), (1, 1), (0, 0), (1, 1), 1, True, 1),
    "aspp d6 r3 divisible": (2, 3, 4, (12, 15), (3, 3), (1, 1), (6, 6), (6, 6), 1, False, 3),
    "d4 r4 divisible": (2, 3, 4, (8, 12), (3, 3), (1, 1), (4, 4), (4, 4), 1, False, 4),
}


@pytest.mark.parametrize("case", EXACT.values(), ids=EXACT.keys())
def test_exact_cases_equal_conv_backward_of_filtered_grad(case):
    n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias, r = case
    x, w, b, gy = make_case(n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias)
    _, gx, gw, _ = run_filtered(x, w, b, gy, stride, padding, dilation, groups, r)
    ex_gx, ex_gw = exact_with_filtered_grad(x, w, b, gy, stride, padding, dilation, groups, r)
    torch.testing.assert_close(gx, ex_gx)
    torch.testing.assert_close(gw, ex_gw)


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,groups",
    [((3, 3), 1, 1, 1, 1), ((1, 1), 2, 0, 1, 1), ((3, 3), 1, 2, 2, 2), ((5, 5), 1, 2, 1, 4)],
)
def test_gradcheck_when_r_is_one(kernel, stride, padding, dilation, groups):
    x, w, b, _ = make_case(2, 4, 4, (6, 7), kernel, stride, padding, dilation, groups, True)
    inputs = tuple(t.requires_grad_(True) for t in (x, w, b))
    assert torch.autograd.gradcheck(
        lambda x, w, b: filtered_conv2d(x, w, b, stride, padding, dilation, groups, patch_size=1), inputs
    )


def test_same_padding_string():
    x, w, b, gy = make_case(2, 3, 4, (9, 10), (3, 3), 1, 2, 2, 1, True)
    _, gx, gw, _ = run_filtered(x, w, b, gy, 1, "same", 2, 1, 4)
    _, gx_num, gw_num, _ = run_filtered(x, w, b, gy, 1, 2, 2, 1, 4)
    torch.testing.assert_close(gx, gx_num)
    torch.testing.assert_close(gw, gw_num)


def test_patch_mean_and_sum_partial_patches():
    x = torch.arange(1.0, 26.0).reshape(1, 1, 5, 5)
    assert patch_mean(x, 2).shape == (1, 1, 3, 3)
    # last patch of row 0: columns 4, rows 0-1 -> (5 + 10) / 2; corner: 25 alone
    assert patch_mean(x, 2)[0, 0, 0, 2].item() == 7.5
    assert patch_mean(x, 2)[0, 0, 2, 2].item() == 25.0
    assert patch_sum(x, 2)[0, 0, 0, 0].item() == 1 + 2 + 6 + 7
    assert patch_sum(x, 2)[0, 0, 2, 1].item() == 23 + 24
    torch.testing.assert_close(patch_mean(x, 2), ref_patch_means(x.double(), 2).float())


def test_float32_matches_float64():
    case = GENERAL["3x3 stride2"]
    n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias, r = case
    x, w, b, gy = make_case(n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias)
    x32, w32, _, gy32 = make_case(n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias,
                                   dtype=torch.float32)
    _, gx, gw, _ = run_filtered(x, w, b, gy, stride, padding, dilation, groups, r)
    _, gx32, gw32, _ = run_filtered(x32, w32, None, gy32, stride, padding, dilation, groups, r)
    assert gx32.dtype == torch.float32 and gw32.dtype == torch.float32
    torch.testing.assert_close(gx32, gx.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw32, gw.float(), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", GENERAL.values(), ids=GENERAL.keys())
def test_cuda_matches_cpu(case):
    n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias, r = case
    cpu = make_case(n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias)
    gpu = make_case(n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias, device="cuda")
    for a, b_ in zip(run_filtered(*cpu, stride, padding, dilation, groups, r),
                     run_filtered(*gpu, stride, padding, dilation, groups, r)):
        if a is not None:
            torch.testing.assert_close(b_.cpu(), a)


def saved_bytes(fn, exclude):
    """Bytes autograd saves for backward during fn(), not counting the tensors in ``exclude``."""
    skip = {t.data_ptr() for t in exclude}
    total = []

    def pack(t):
        if t.data_ptr() not in skip:
            total.append(t.numel() * t.element_size())
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total)


@pytest.mark.parametrize("stride,dilation,r", [(1, 1, 2), (1, 1, 4), (2, 1, 2), (1, 1, 7), (1, 6, 3), (1, 4, 2)])
def test_saved_memory_is_patch_sums_only(stride, dilation, r):
    n, c, size = 2, 8, 28
    x = torch.randn(n, c, size, size, requires_grad=True)
    conv = torch.nn.Conv2d(c, c, 3, stride, dilation, dilation)
    params = list(conv.parameters())
    plain = saved_bytes(lambda: conv(x), params)
    filtered = saved_bytes(
        lambda: filtered_conv2d(x, conv.weight, conv.bias, stride, dilation, dilation, patch_size=r), params
    )
    out = (size - 1) // stride + 1
    patches = math.ceil(out / r) ** 2
    assert plain == x.numel() * 4
    assert filtered == n * c * patches * 4
    assert filtered / plain == pytest.approx(patches / size**2)


def test_large_maps_take_the_upsampling_spread(monkeypatch):
    """grad_x maps above _LARGE_BYTES with rows >= 64 are written by nearest upsampling: same values as the tiled copy."""
    import gradfilt.ops.stages as fn
    from gradfilt.ops import native as _native

    monkeypatch.setattr(_native, "_kernels", None)  # both sides on the pure-PyTorch path
    x, w, b, gy = make_case(2, 3, 4, (16, 64), (3, 3), (1, 1), (1, 1), (1, 1), 1, False)
    tiled = run_filtered(x, w, b, gy, (1, 1), (1, 1), (1, 1), 1, 2)
    monkeypatch.setattr(fn, "_LARGE_BYTES", 0)
    upsampled = run_filtered(x, w, b, gy, (1, 1), (1, 1), (1, 1), 1, 2)
    assert torch.equal(tiled[1], upsampled[1]) and torch.equal(tiled[2], upsampled[2])


def test_no_grad_keeps_nothing(monkeypatch):
    import gradfilt.ops.filtered as functional

    def fail(*args):
        raise AssertionError("patch sums computed although no backward can run")

    monkeypatch.setattr(functional, "input_sums", fail)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.no_grad():
        assert torch.equal(filtered_conv2d(x, conv.weight, conv.bias, 1, 1, patch_size=2), conv(x))
    conv.requires_grad_(False)
    x.requires_grad_(False)
    assert torch.equal(filtered_conv2d(x, conv.weight, conv.bias, 1, 1, patch_size=2), conv(x))
    with pytest.raises(ValueError, match="patch_size"):  # still validated
        with torch.no_grad():
            filtered_conv2d(x, conv.weight, patch_size=0)


def test_skips_unneeded_work():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    params = list(conv.parameters())
    # input needs no grad: the weight is not saved, only x~
    assert saved_bytes(lambda: filtered_conv2d(x, conv.weight, conv.bias, 1, 1, patch_size=2), params) == 2 * 4 * 16 * 4
    # frozen weight: no x~ kept at all, and no weight gradient computed
    conv.weight.requires_grad_(False)
    x.requires_grad_(True)
    assert saved_bytes(lambda: filtered_conv2d(x, conv.weight, None, 1, 1, patch_size=2), params) == 0
    filtered_conv2d(x, conv.weight, None, 1, 1, patch_size=2).sum().backward()
    assert conv.weight.grad is None and x.grad is not None


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(patch_size=0), "patch_size must be an int >= 1"),
        (dict(patch_size=2.0), "patch_size must be an int >= 1"),
        (dict(patch_size=4, dilation=6, padding=6), r"not divisible by patch_size 4.*\[1, 2, 3, 6\]"),
        (dict(patch_size=2, dilation=2, stride=2, padding=2), "stride 2 and dilation 2"),
    ],
)
def test_bad_geometry_errors(kwargs, message):
    x, w = torch.randn(1, 2, 12, 12), torch.randn(2, 2, 3, 3)
    with pytest.raises(ValueError, match=message):
        filtered_conv2d(x, w, **kwargs)


def _grads(conv, x):
    x = x.clone().requires_grad_(True)
    y = conv(x)
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    out = (x.grad, conv.weight.grad, conv.bias.grad)
    conv.zero_grad()
    return y, out


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding=1), dict(kernel_size=3, padding=1, stride=2),
                                    dict(kernel_size=3, padding=1, groups=8), dict(kernel_size=3, padding=2,
                                                                                   dilation=2)])
def test_bf16_autocast_forward_float32_backward(kwargs):
    """The AMP pattern: forward under autocast, backward outside; float32 parameters get float32 gradients."""
    torch.manual_seed(0)
    conv = FilteredConv2d(8, 16, patch_size=2, **kwargs)
    x = torch.randn(2, 8, 12, 12)
    _, exact = _grads(conv, x)
    x_amp = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x_amp)
    assert y.dtype == torch.bfloat16  # like nn.Conv2d under autocast
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    for got, want in zip((x_amp.grad, conv.weight.grad, conv.bias.grad), exact):
        assert got.dtype == torch.float32
        assert torch.linalg.vector_norm(got - want) <= 2e-2 * torch.linalg.vector_norm(want)


def test_autocast_keeps_x_sums_in_the_autocast_dtype():
    conv = FilteredConv2d(8, 8, 3, padding=1, patch_size=2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(torch.randn(2, 8, 8, 8))
    sums = [t for t in saved if t.shape == (8, 2, 4, 4)]  # x~, channel-major
    assert len(sums) == 1 and sums[0].dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models(dtype):
    torch.manual_seed(0)
    conv = FilteredConv2d(8, 16, 3, padding=1, patch_size=4)
    x = torch.randn(2, 8, 16, 16)
    _, exact = _grads(conv, x)
    y, half = _grads(conv.to(dtype), x.to(dtype))
    assert y.dtype == dtype
    for got, want in zip(half, exact):
        assert got.dtype == dtype
        assert torch.linalg.vector_norm(got.float() - want) <= 2e-2 * torch.linalg.vector_norm(want)


def test_empty_batch_gives_zero_gradients():
    conv = FilteredConv2d(4, 4, 3, padding=1, patch_size=2)
    x = torch.randn(0, 4, 8, 8, requires_grad=True)
    conv(x).sum().backward()
    assert x.grad.shape == x.shape and torch.equal(conv.weight.grad, torch.zeros_like(conv.weight))


@pytest.mark.parametrize("c_in, c_out, kernel, padding, groups, size, r", [
    (6, 8, 3, 1, 1, (12, 10), 2), (6, 8, 3, 1, 1, (13, 11), 4), (6, 8, 1, 0, 1, (9, 9), 2), (6, 6, 3, 1, 6, (10, 7), 2),
])
def test_patch_grid_output_is_the_whole_grad_x(c_in, c_out, kernel, padding, groups, size, r):
    from gradfilt.ops import axis_modes, filter_geometry, filtered_backward, input_sums

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, c_in, *size, generator=gen, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, kernel, kernel, generator=gen, dtype=torch.float64)
    y = F.conv2d(x, weight, None, 1, padding, 1, groups)
    grad_y = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    axes = filter_geometry(x.shape, y.shape, (kernel, kernel), (1, 1), (padding, padding), (1, 1), r,
                           axis_modes(1, 1, r))
    x_sum = input_sums(x, axes)
    full_x, full_w, _ = filtered_backward(grad_y, x_sum, weight, axes, groups, x.shape, weight.shape, True, True, False)
    grid_x, grid_w, _ = filtered_backward(grad_y, x_sum, weight, axes, groups, x.shape, weight.shape, True, True, False,
                                          grid_output=True)
    hp, wp = -(-size[0] // r), -(-size[1] // r)
    assert grid_x.shape == (3, c_in, hp, wp) and torch.equal(grid_w, full_w)
    spread = grid_x.repeat_interleave(r, 2).repeat_interleave(r, 3)[:, :, :size[0], :size[1]]
    assert torch.equal(spread, full_x)  # every input pixel takes its patch's value
    # and the op through autograd gives the same full-resolution gradient
    xg = x.clone().requires_grad_()
    (auto,) = torch.autograd.grad(filtered_conv2d(xg, weight, None, 1, padding, 1, groups, patch_size=r), xg, grad_y)
    torch.testing.assert_close(auto, full_x)


def test_patch_grid_output_refuses_strided_convs():
    from gradfilt.ops import axis_modes, filter_geometry, filtered_backward

    axes = filter_geometry((1, 4, 8, 8), (1, 4, 4, 4), (3, 3), (2, 2), (1, 1), (1, 1), 2, axis_modes(2, 1, 2))
    with pytest.raises(ValueError, match="one stride phase"):
        filtered_backward(torch.zeros(1, 4, 4, 4), None, torch.zeros(4, 4, 3, 3), axes, 1, (1, 4, 8, 8),
                          (4, 4, 3, 3), True, False, False, grid_output=True)


@pytest.mark.parametrize("patch_major", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_patch_major_grid_is_the_product_in_patch_major_memory(patch_major, dtype, onednn_products):
    """G^T theta~ and G X^T for G, X as views of patch-major memory (1x1 oneDNN convs for float32 on the CPU,
    here at any batch size) and as channel-major memory (BLAS products), against float64 products; grad_x~ is
    a view of (B, C_in)."""
    from gradfilt.ops import stages as functional
    from gradfilt.ops import patch_major_grid
    gen = torch.Generator().manual_seed(0)
    n, hp, wp, c_out, c_in = 3, 5, 4, 24, 40
    b = n * hp * wp
    g = torch.randn(b, c_out, generator=gen, dtype=dtype).T if patch_major else \
        torch.randn(c_out, b, generator=gen, dtype=dtype)
    theta = torch.randn(c_out, c_in, generator=gen, dtype=dtype)
    grid = patch_major_grid(g, theta, n, hp, wp)
    assert grid.shape == (n, c_in, 1, hp, 1, wp)
    assert grid.stride()[1] == 1 and grid.stride()[0] == hp * wp * c_in  # patch-major (N, Hp, Wp, C_in)
    ref = (g.double().T @ theta.double()).view(n, hp, wp, c_in).permute(0, 3, 1, 2)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(grid[:, :, 0, :, 0, :].double(), ref, rtol=0, atol=tol * ref.abs().max())
    x_sum = torch.randn(b, c_in, generator=gen, dtype=dtype).T if patch_major else \
        torch.randn(c_in, b, generator=gen, dtype=dtype)
    grad_w = functional.tap_grad(g, x_sum)  # G X^T
    ref_w = g.double() @ x_sum.double().T
    assert grad_w.shape == (c_out, c_in)
    assert torch.allclose(grad_w.double(), ref_w, rtol=0, atol=tol * ref_w.abs().max())
    assert onednn_products == ([1, 2] if patch_major and dtype == torch.float32 else [])


@pytest.mark.parametrize("kernels", [True, False])
def test_patch_sums_are_patch_major_for_ungrouped_float32_convs(kernels, monkeypatch):
    """input_sums / grad_patch_sums: patch-major memory for ungrouped float32 convs on the CPU (compiled or
    pure-PyTorch sums), channel-major for grouped convs and float64; the same values either way."""
    from gradfilt.ops import native as _native
    from gradfilt.ops import axis_modes, filter_geometry, grad_patch_sums, input_sums
    if not kernels:
        monkeypatch.setattr(_native, "usable", lambda *tensors: False)
    x = torch.randn(2, 8, 10, 9, generator=torch.Generator().manual_seed(0))
    axes = filter_geometry(x.shape, x.shape, (3, 3), (1, 1), (1, 1), (1, 1), 2, axis_modes(1, 1, 2))
    ref = input_sums(x.double(), axes)
    assert ref.is_contiguous()  # float64: channel-major (C, N, nh, nw)
    for groups, patch_major in ((1, True), (2, False), (8, False)):
        for sums in (input_sums(x, axes, groups), grad_patch_sums(x, axes, groups)):
            assert (sums.permute(1, 2, 3, 0) if patch_major else sums).is_contiguous(), groups
            torch.testing.assert_close(sums.double(), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("case", ["resnet 3x3", "3x3 r4 batch1", "valid padding", "3x3 stride2"])
def test_float32_op_through_onednn_products(case, onednn_products):
    """The float32 op on the CPU with the oneDNN grid products taken at any batch size equals the float64 op
    (stride 1: both products through oneDNN; strided x~ stays channel-major, so there neither)."""
    n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias, r = GENERAL[case]
    x, w, b, gy = make_case(n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias)
    x32, w32, _, gy32 = make_case(n, c_in, c_out, size, kernel, stride, padding, dilation, groups, bias,
                                   dtype=torch.float32)
    _, gx, gw, _ = run_filtered(x, w, None, gy, stride, padding, dilation, groups, r)
    _, gx32, gw32, _ = run_filtered(x32, w32, None, gy32, stride, padding, dilation, groups, r)
    torch.testing.assert_close(gx32, gx.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw32, gw.float(), rtol=1e-5, atol=1e-4)
    assert sorted(onednn_products) == ([1, 2] if stride == (1, 1) else [])
