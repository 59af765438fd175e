// The full-size passes of the filtered conv backward on the CPU (float32 / float64, OpenMP).
//
// The filtered backward (gradfilt/functional.py) touches full-size maps twice and does
// everything else on the r x r patch grid: it reads g_y once into patch sums, and writes
// grad_x once by giving every pixel its patch's value. On the short rows of small maps torch's
// strided element-wise kernels do those passes with more per-element overhead than these
// loops (`python -m latency --mode parts` times each pass). gradfilt/_native.py checks every argument
// (shapes, strides, dtypes, index ranges) and falls back to the pure-PyTorch versions when
// this module is not built. The module uses the Python C API only (no torch headers); OpenMP
// resolves to the libgomp torch has already loaded, and the thread count is passed in from
// torch.get_num_threads().
//
// patch_sums(dtype, src, dst, planes, C, H, W, r, row_start, n_ph, col_start, n_pw,
//            dst_sn, dst_sc, threads, simd, patch_major)
//   src: contiguous (N, C, H, W), planes = N * C. For patch (ph, pw) of plane (n, c):
//     dst[n * dst_sn + c * dst_sc + ph * n_pw + pw]  (patch_major: dst[((n * n_ph + ph) * n_pw + pw) * C + c]) =
//       sum of src[n, c, h, w] over h in [row_start + ph * r, row_start + (ph + 1) * r) and
//       w in [col_start + pw * r, col_start + (pw + 1) * r), both clipped to the map
//       (pixels outside it are zero padding).
//   simd: allow the AVX-512 loops (float32, patches from (0, 0): r = 4, and r = 2 on rows of at least
//     kStreamColumns columns) when has_avx512().
//
// spread(dtype, src, available, dst, planes, C, H, W, src_sn, src_sc, row_off, col_off, r, col, threads)
//   dst: contiguous (N, C, H, W). dst[n, c, h, w] = src[n * src_sn + c * src_sc + row_off[h] + col_off[w]]
//     (int64 element offsets: a pixel's patch, and its stride phase for strided convs).
//     r > 0 promises col_off[w] == (w / r) * col for every w (widening without a gather).
//     Checked before any write: every read lies in src[0, available), and the promise holds.
//
// kernel_sums(dtype, w, theta, elements, taps, scale, threads)
//   w: contiguous (elements, taps); theta[e] = scale * sum_k w[e, k].
// repeat_taps(dtype, tap, w, elements, taps, scale, threads)
//   tap: contiguous (elements,); w[e, k] = scale * tap[e] for every tap k.
//
// has_avx512(): whether patch_sums' AVX-512 loops can run on this CPU.
//
// dtype: 0 = float32, 1 = float64. Pointers are integers (tensor.data_ptr()).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define GRADFILT_AVX512 1
#endif

namespace {

using Index = Py_ssize_t;

// acc[0 : W) = sum of the R rows starting at s (row stride W); R known at compile time
// for the common patch sizes so the adds vectorize without a loop over rows.
template <typename T, int R>
inline void sum_rows(const T* __restrict s, T* __restrict acc, Index W, Index rows) {
  if constexpr (R == 2) {
    for (Index w = 0; w < W; ++w) acc[w] = s[w] + s[W + w];
  } else if constexpr (R == 4) {
    for (Index w = 0; w < W; ++w) acc[w] = (s[w] + s[W + w]) + (s[2 * W + w] + s[3 * W + w]);
  } else {
    std::memcpy(acc, s, sizeof(T) * W);
    for (Index i = 1; i < rows; ++i)
      for (Index w = 0; w < W; ++w) acc[w] += s[i * W + w];
  }
}

// out[j] = sum of acc[j * r : (j + 1) * r) for j < n.
template <typename T, int R>
inline void sum_runs(const T* __restrict acc, T* __restrict out, Index n, Index r) {
  if constexpr (R == 2) {
    for (Index j = 0; j < n; ++j) out[j] = acc[2 * j] + acc[2 * j + 1];
  } else if constexpr (R == 4) {
    for (Index j = 0; j < n; ++j) out[j] = (acc[4 * j] + acc[4 * j + 1]) + (acc[4 * j + 2] + acc[4 * j + 3]);
  } else {
    for (Index j = 0; j < n; ++j) {
      T t = 0;
      for (Index i = 0; i < r; ++i) t += acc[j * r + i];
      out[j] = t;
    }
  }
}

struct PatchSumArgs {
  Index planes, C, H, W, r, row_start, n_ph, col_start, n_pw, dst_sn, dst_sc;
  int threads;
  int simd;  // 0: the portable loops only (tests compare them with the AVX-512 ones)
  int patch_major;  // dst is (N, n_ph, n_pw, C) (dst_sn, dst_sc unused)
};

// One (H, W) plane tiled by patches from (0, 0) (the last row / column of patches may be
// partial): R-row sums of every patch row into acc (n_ph, W), then runs of r along each row
// (one flat loop over acc when W is a multiple of r: acc[j * r + i] belongs to output j).
template <typename T, int R>
void anchored_plane(const T* __restrict plane, T* __restrict out, T* __restrict acc, const PatchSumArgs& a) {
  for (Index k = 0; k < a.n_ph; ++k) {
    const Index rows = std::min<Index>(a.r, a.H - k * a.r);
    if (rows == a.r)
      sum_rows<T, R>(plane + k * a.r * a.W, acc + k * a.W, a.W, rows);
    else
      sum_rows<T, 0>(plane + k * a.r * a.W, acc + k * a.W, a.W, rows);
  }
  const Index whole = a.W / a.r;
  if (whole * a.r == a.W) {
    sum_runs<T, R>(acc, out, a.n_ph * a.n_pw, a.r);
    return;
  }
  for (Index k = 0; k < a.n_ph; ++k) {
    const T* row = acc + k * a.W;
    T* o = out + k * a.n_pw;
    sum_runs<T, R>(row, o, whole, a.r);
    T t = 0;  // the partial last patch of the row
    for (Index w = whole * a.r; w < a.W; ++w) t += row[w];
    o[whole] = t;
  }
}

// Any plane: patches clipped to the map; acc holds one patch row's row sums (W values).
template <typename T>
void clipped_plane(const T* __restrict plane, T* __restrict out, T* __restrict acc, const PatchSumArgs& a) {
  for (Index ph = 0; ph < a.n_ph; ++ph) {
    const Index h0 = std::max<Index>(a.row_start + ph * a.r, 0);
    const Index h1 = std::min<Index>(a.row_start + (ph + 1) * a.r, a.H);
    T* o = out + ph * a.n_pw;
    if (h0 >= h1) {  // the whole patch row lies in the padding
      std::fill(o, o + a.n_pw, T(0));
      continue;
    }
    sum_rows<T, 0>(plane + h0 * a.W, acc, a.W, h1 - h0);
    for (Index pw = 0; pw < a.n_pw; ++pw) {
      const Index w0 = std::max<Index>(a.col_start + pw * a.r, 0);
      const Index w1 = std::min<Index>(a.col_start + (pw + 1) * a.r, a.W);
      T t = 0;
      for (Index w = w0; w < w1; ++w) t += acc[w];
      o[pw] = t;
    }
  }
}

// A plane tiled by whole 2 x 2 patches (H and W even): every patch's four reads unrolled, in
// the same order as anchored_plane (rows first, then the pair), so both give the same bits.
// Used for r = 2 only, where unrolling beat the per-row loops in benchmarks (for r = 4 it did not).
template <typename T>
void pairs_plane(const T* __restrict plane, T* __restrict out, const PatchSumArgs& a) {
  for (Index ph = 0; ph < a.n_ph; ++ph) {
    const T* top = plane + 2 * ph * a.W;
    const T* bottom = top + a.W;
    T* o = out + ph * a.n_pw;
    for (Index pw = 0; pw < a.n_pw; ++pw)
      o[pw] = (top[2 * pw] + bottom[2 * pw]) + (top[2 * pw + 1] + bottom[2 * pw + 1]);
  }
}

// Rows of at least this many columns are summed rows first (streaming_plane): the other loops read
// the r rows of a patch row side by side, which on long rows ran at about half the speed of one forward
// stream in benchmarks; on short rows they need fewer instructions and win.
constexpr Index kStreamColumns = 64;

// The sum of the run of m <= R values at p (m < R: the last run of a row, cut by the map's edge), as
// a tree for R = 2 and 4, a missing value counting as a zero in its place (as the AVX-512 loops'
// masked lanes do, so both give the same bits).
template <typename T, int R>
inline T run_sum(const T* p, Index m) {
  if constexpr (R == 2)
    return p[0] + (m > 1 ? p[1] : T(0));
  else
    return (p[0] + (m > 1 ? p[1] : T(0))) + ((m > 2 ? p[2] : T(0)) + (m > 3 ? p[3] : T(0)));
}

// One plane tiled by R x R patches from (0, 0) (R = 2 or 4; the last ones may be partial), rows first:
// read row by row in memory order, each row's runs of R summed (run_sum), a patch row's rows added in
// order ((h0 + h1) + h2) + h3 in acc (n_pw values), the last row's straight into out.
template <typename T, int R>
void streaming_plane(const T* __restrict plane, T* __restrict out, T* __restrict acc, const PatchSumArgs& a) {
  const Index whole = a.W / R, tail = a.W - whole * R;
  for (Index ph = 0; ph < a.n_ph; ++ph) {
    const Index rows = std::min<Index>(R, a.H - ph * R);
    for (Index k = 0; k < rows; ++k) {
      const T* row = plane + (ph * R + k) * a.W;
      T* dst = k == rows - 1 ? out + ph * a.n_pw : acc;
      if (k == 0) {
        for (Index j = 0; j < whole; ++j) dst[j] = run_sum<T, R>(row + j * R, R);
        if (tail) dst[whole] = run_sum<T, R>(row + whole * R, tail);
      } else {
        for (Index j = 0; j < whole; ++j) dst[j] = acc[j] + run_sum<T, R>(row + j * R, R);
        if (tail) dst[whole] = acc[whole] + run_sum<T, R>(row + whole * R, tail);
      }
    }
  }
}

#ifdef GRADFILT_AVX512
// AVX-512 patch sums of float32 maps tiled by 4 x 4 patches from (0, 0), chosen at run time
// when the CPU has AVX-512F and the caller allows it (the tests compare both paths bit for
// bit): per patch row, 16-lane column sums of its rows (masked loads; lanes past the row read
// zeros), then neighbouring lanes summed in pairs and pairs of pairs, 32 columns per step.
// The additions run in anchored_plane's order, so both paths give the same bits. Used for r = 4 on
// rows shorter than kStreamColumns, where it beat anchored_plane in A/B benchmarks; for r = 2
// pairs_plane stays faster there.
#define GRADFILT_AVX512_FN __attribute__((target("avx512f")))

// The first n of 16 lanes (none when n <= 0).
GRADFILT_AVX512_FN inline __mmask16 first_lanes(Index n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << std::max<Index>(n, 0)) - 1);
}

// 16 columns summed over `rows` (1 to 4) rows of stride W, in sum_rows' order.
GRADFILT_AVX512_FN inline __m512 column_sums4(const float* s, Index W, Index rows, __mmask16 m) {
  const __m512 s0 = _mm512_maskz_loadu_ps(m, s);
  if (rows == 1) return s0;
  const __m512 s01 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(m, s + W));
  if (rows == 2) return s01;
  const __m512 s2 = _mm512_maskz_loadu_ps(m, s + 2 * W);
  if (rows == 3) return _mm512_add_ps(s01, s2);  // sum_rows<T, 0>: ((s0 + s1) + s2)
  return _mm512_add_ps(s01, _mm512_add_ps(s2, _mm512_maskz_loadu_ps(m, s + 3 * W)));  // sum_rows<T, 4>
}

GRADFILT_AVX512_FN void quads_plane_avx512(const float* plane, float* out, Index H, Index W, Index n_ph,
                                           Index n_pw) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (Index ph = 0; ph < n_ph; ++ph) {
    const Index rows = std::min<Index>(4, H - 4 * ph);
    const float* s = plane + 4 * ph * W;
    float* o = out + ph * n_pw;
    for (Index w0 = 0; w0 < W; w0 += 32) {
      const __m512 a = column_sums4(s + w0, W, rows, first_lanes(W - w0));  // columns w0 .. w0 + 15
      const __m512 b = W - w0 > 16 ? column_sums4(s + w0 + 16, W, rows, first_lanes(W - w0 - 16))
                                   : _mm512_setzero_ps();  // columns w0 + 16 .. w0 + 31
      // pairs[j] = columns (w0 + 2j) + (w0 + 2j + 1); quads[j] = pairs[2j] + pairs[2j + 1], j < 8
      const __m512 pairs = _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
      const __m512 quads = _mm512_add_ps(_mm512_permutexvar_ps(even, pairs), _mm512_permutexvar_ps(odd, pairs));
      _mm512_mask_storeu_ps(o + w0 / 4, first_lanes(std::min<Index>(n_pw - w0 / 4, 8)), quads);
    }
  }
}

// streaming_plane for float32 (R = 2 or 4): 32 columns of a row per step (masked loads; lanes past
// the row read zeros), neighbouring lanes summed in pairs (and for R = 4 pairs of pairs), rows added
// in streaming_plane's order; acc holds n_pw + 16 values.
template <int R>
GRADFILT_AVX512_FN void streaming_plane_avx512(const float* plane, float* out, float* acc, Index H, Index W,
                                               Index n_ph, Index n_pw) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (Index ph = 0; ph < n_ph; ++ph) {
    const Index rows = std::min<Index>(R, H - R * ph);
    for (Index k = 0; k < rows; ++k) {
      const float* row = plane + (R * ph + k) * W;
      float* dst = k == rows - 1 ? out + ph * n_pw : acc;
      for (Index w0 = 0; w0 < W; w0 += 32) {
        const __m512 lo = _mm512_maskz_loadu_ps(first_lanes(W - w0), row + w0);
        const __m512 hi = _mm512_maskz_loadu_ps(first_lanes(W - w0 - 16), row + w0 + 16);
        // runs[j] = columns (w0 + 2j) + (w0 + 2j + 1); for R = 4 then runs[2j] + runs[2j + 1], j < 8
        __m512 runs = _mm512_add_ps(_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi));
        if constexpr (R == 4)
          runs = _mm512_add_ps(_mm512_permutexvar_ps(even, runs), _mm512_permutexvar_ps(odd, runs));
        const Index j = w0 / R;
        const __mmask16 m = first_lanes(std::min<Index>(n_pw - j, 32 / R));
        if (k > 0) runs = _mm512_add_ps(_mm512_maskz_loadu_ps(m, acc + j), runs);
        _mm512_mask_storeu_ps(dst + j, m, runs);
      }
    }
  }
}

bool has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#else
bool has_avx512() { return false; }
#endif

constexpr Index kTile = 16;  // channels per patch-major tile: one 64-byte line of float32 per patch

// out[q * ld + c] = tile[c * patches + q] for c < count, q < patches, in 4 x 4 blocks (SSE registers
// for float32, in the baseline x86-64 instruction set: compiled wherever the x86 intrinsics are, the
// GRADFILT_AVX512 guard) so that reads and writes go 4 values at a time.
template <typename T>
void transpose_tile(const T* tile, T* out, Index count, Index patches, Index ld) {
  Index q = 0;
#ifdef GRADFILT_AVX512
  if constexpr (std::is_same_v<T, float>) {
    // 4 patches at a time, all their channels: each patch's run of `count` values is written in one go
    const Index c4 = count / 4 * 4;
    for (; q + 4 <= patches; q += 4) {
      for (Index c = 0; c < c4; c += 4) {
        const float* r0 = tile + c * patches + q;
        __m128 a0 = _mm_loadu_ps(r0), a1 = _mm_loadu_ps(r0 + patches);
        __m128 a2 = _mm_loadu_ps(r0 + 2 * patches), a3 = _mm_loadu_ps(r0 + 3 * patches);
        _MM_TRANSPOSE4_PS(a0, a1, a2, a3);
        _mm_storeu_ps(out + q * ld + c, a0);
        _mm_storeu_ps(out + (q + 1) * ld + c, a1);
        _mm_storeu_ps(out + (q + 2) * ld + c, a2);
        _mm_storeu_ps(out + (q + 3) * ld + c, a3);
      }
      for (Index i = 0; i < 4; ++i)
        for (Index c = c4; c < count; ++c) out[(q + i) * ld + c] = tile[c * patches + q + i];
    }
  }
#endif
  for (; q < patches; ++q)
    for (Index c = 0; c < count; ++c) out[q * ld + c] = tile[c * patches + q];
}

// plane(src plane, out, acc) for every (n, c) plane of src. Channel-major: out is the plane's place
// in dst. Patch-major (dst (N, n_ph, n_pw, C)): the planes of kTile channels of one image go to a
// per-thread tile, which is then written transposed, kTile neighbouring channels per patch.
template <typename T, typename Plane>
void for_planes(const T* src, T* dst, const PatchSumArgs& a, Index acc_size, Plane plane) {
  const Index hw = a.H * a.W, patches = a.n_ph * a.n_pw;
  if (!a.patch_major) {
#pragma omp parallel num_threads(a.threads)
    {
      std::vector<T> acc(std::max<Index>(acc_size, 1));  // per thread
#pragma omp for schedule(static)
      for (Index p = 0; p < a.planes; ++p)
        plane(src + p * hw, dst + (p / a.C) * a.dst_sn + (p % a.C) * a.dst_sc, acc.data());
    }
    return;
  }
  const Index tiles = (a.C + kTile - 1) / kTile;
#pragma omp parallel num_threads(a.threads)
  {
    std::vector<T> acc(std::max<Index>(acc_size, 1)), tile(kTile * std::max<Index>(patches, 1));
#pragma omp for schedule(static)
    for (Index job = 0; job < (a.planes / a.C) * tiles; ++job) {
      const Index n = job / tiles, c0 = (job % tiles) * kTile, count = std::min<Index>(kTile, a.C - c0);
      for (Index c = 0; c < count; ++c) plane(src + (n * a.C + c0 + c) * hw, tile.data() + c * patches, acc.data());
      transpose_tile<T>(tile.data(), dst + n * patches * a.C + c0, count, patches, a.C);
    }
  }
}

// R > 0: patches tile the map from (0, 0) (anchored); R = 0: any patches (anchored says whether they do).
template <typename T, int R>
void patch_sums_with(const T* src, T* dst, const PatchSumArgs& a, bool anchored) {
  if constexpr (R == 2 || R == 4) {
    const bool stream = a.W >= kStreamColumns;
#ifdef GRADFILT_AVX512
    if constexpr (std::is_same_v<T, float>) {
      if (a.simd && has_avx512() && (stream || R == 4)) {
        for_planes<float>(src, dst, a, a.n_pw + 16, [&](const float* plane, float* out, float* acc) {
          if (stream)
            streaming_plane_avx512<R>(plane, out, acc, a.H, a.W, a.n_ph, a.n_pw);
          else
            quads_plane_avx512(plane, out, a.H, a.W, a.n_ph, a.n_pw);
        });
        return;
      }
    }
#endif
    if (stream) {
      for_planes<T>(src, dst, a, a.n_pw,
                    [&](const T* plane, T* out, T* acc) { streaming_plane<T, R>(plane, out, acc, a); });
      return;
    }
  }
  const bool pairs = R == 2 && anchored && a.H % 2 == 0 && a.W % 2 == 0;
  for_planes<T>(src, dst, a, a.n_ph * a.W, [&](const T* plane, T* out, T* acc) {
    if (pairs)
      pairs_plane<T>(plane, out, a);
    else if (anchored)
      anchored_plane<T, R>(plane, out, acc, a);
    else
      clipped_plane<T>(plane, out, acc, a);
  });
}

template <typename T>
void patch_sums(const T* src, T* dst, const PatchSumArgs& a) {
  // patches tile the map from (0, 0), the last ones possibly partial
  const bool anchored = a.row_start == 0 && a.col_start == 0 && a.n_ph == (a.H + a.r - 1) / a.r &&
                        a.n_pw == (a.W + a.r - 1) / a.r;
  if (anchored && a.r == 2)
    patch_sums_with<T, 2>(src, dst, a, true);
  else if (anchored && a.r == 4)
    patch_sums_with<T, 4>(src, dst, a, true);
  else
    patch_sums_with<T, 0>(src, dst, a, anchored);
}

// row[0 : W) = g[col_off[w]]; R > 0 promises col_off[w] == (w / R) * col (widening without a gather).
// UNIT: col == 1 (a channel-major grid), so the reads are contiguous and the copies vectorize.
template <typename T, int R, bool UNIT>
inline void widen_row(const T* __restrict g, T* __restrict row, Index W, Index col, const int64_t* col_off) {
  if constexpr (R > 0) {
    const Index step = UNIT ? 1 : col;
    const Index whole = W / R;
    for (Index w = 0; w < whole; ++w)
      for (int i = 0; i < R; ++i) row[R * w + i] = g[w * step];
    for (Index w = R * whole; w < W; ++w) row[w] = g[whole * step];
  } else {
    for (Index w = 0; w < W; ++w) row[w] = g[col_off[w]];
  }
}

struct SpreadArgs {
  Index planes, C, H, W, src_sn, src_sc, r, col;
  const int64_t* row_off;
  const int64_t* col_off;
  int threads;
};

// Rows with the same source row (the r rows of a patch; with a stride s, every s-th of them)
// copy a row written before instead of widening again: same_as[h] is that row, or -1. It is
// the first widened row of the run, never a copy: a memcpy reading the row the previous
// memcpy just wrote would wait for those stores.
constexpr Index kLookBack = 16;

template <typename T, int R, bool UNIT>
void spread_with(const T* src, T* dst, const SpreadArgs& a) {
  std::vector<Index> same_as(a.H, -1);
  for (Index h = 1; h < a.H; ++h)
    for (Index j = h - 1; j >= std::max<Index>(0, h - kLookBack); --j)
      if (a.row_off[j] == a.row_off[h]) {
        same_as[h] = same_as[j] >= 0 ? same_as[j] : j;
        break;
      }
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (Index p = 0; p < a.planes; ++p) {
    const T* grid = src + (p / a.C) * a.src_sn + (p % a.C) * a.src_sc;
    T* plane = dst + p * a.H * a.W;
    for (Index h = 0; h < a.H; ++h) {
      T* row = plane + h * a.W;
      if (same_as[h] >= 0)
        std::memcpy(row, plane + same_as[h] * a.W, sizeof(T) * a.W);
      else
        widen_row<T, R, UNIT>(grid + a.row_off[h], row, a.W, a.col, a.col_off);
    }
  }
}

template <typename T, bool UNIT>
void spread_for_r(const T* src, T* dst, const SpreadArgs& a) {
  if (a.r == 2)
    spread_with<T, 2, UNIT>(src, dst, a);
  else if (a.r == 4)
    spread_with<T, 4, UNIT>(src, dst, a);
  else
    spread_with<T, 0, UNIT>(src, dst, a);
}

template <typename T>
void spread(const T* src, T* dst, const SpreadArgs& a) {
  if (a.col == 1)
    spread_for_r<T, true>(src, dst, a);
  else
    spread_for_r<T, false>(src, dst, a);
}

// Kernel taps: theta[e] = scale * sum_k w[e, k] (a kernel's spatial sum, e = (o, i)), and the
// reverse, w_grad[e, k] = scale * tap[e] for every tap k.
struct TapArgs {
  Index elements, taps;
  double scale;
  int threads;
};

// K > 0: the tap count known at compile time (3 x 3 kernels), so the inner loops unroll and vectorize.
template <typename T, int K>
void kernel_sums_with(const T* __restrict w, T* __restrict theta, const TapArgs& a) {
  const Index taps = K > 0 ? K : a.taps;
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (Index e = 0; e < a.elements; ++e) {
    const T* k = w + e * taps;
    T t = 0;
    for (Index j = 0; j < taps; ++j) t += k[j];
    theta[e] = t * static_cast<T>(a.scale);
  }
}

template <typename T, int K>
void repeat_taps_with(const T* __restrict tap, T* __restrict w, const TapArgs& a) {
  const Index taps = K > 0 ? K : a.taps;
#pragma omp parallel for num_threads(a.threads) schedule(static)
  for (Index e = 0; e < a.elements; ++e) {
    const T v = tap[e] * static_cast<T>(a.scale);
    for (Index j = 0; j < taps; ++j) w[e * taps + j] = v;
  }
}

// Calls run(std::integral_constant<int, K>) with K = the tap count when it has compiled loops
// (9: 3 x 3 kernels), else K = 0 (the count read at run time).
template <typename Run>
void with_tap_count(Index taps, Run run) {
  if (taps == 9)
    run(std::integral_constant<int, 9>{});
  else
    run(std::integral_constant<int, 0>{});
}

template <typename T>
void kernel_sums(const T* w, T* theta, const TapArgs& a) {
  with_tap_count(a.taps, [&](auto k) { kernel_sums_with<T, decltype(k)::value>(w, theta, a); });
}

template <typename T>
void repeat_taps(const T* tap, T* w, const TapArgs& a) {
  with_tap_count(a.taps, [&](auto k) { repeat_taps_with<T, decltype(k)::value>(tap, w, a); });
}

template <typename T>
T* ptr(unsigned long long address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

bool valid(int dtype, Index C, int threads) { return (dtype == 0 || dtype == 1) && C >= 1 && threads >= 1; }

PyObject* py_patch_sums(PyObject*, PyObject* args) {
  int dtype;
  unsigned long long src, dst;
  PatchSumArgs a;
  if (!PyArg_ParseTuple(args, "iKKnnnnnnnnnnnipp", &dtype, &src, &dst, &a.planes, &a.C, &a.H, &a.W, &a.r,
                        &a.row_start, &a.n_ph, &a.col_start, &a.n_pw, &a.dst_sn, &a.dst_sc, &a.threads, &a.simd,
                        &a.patch_major))
    return nullptr;
  if (!valid(dtype, a.C, a.threads) || a.r < 1) {
    PyErr_SetString(PyExc_ValueError, "patch_sums: need dtype 0 or 1, C >= 1, threads >= 1 and r >= 1");
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS;
  if (dtype == 0)
    patch_sums(ptr<const float>(src), ptr<float>(dst), a);
  else
    patch_sums(ptr<const double>(src), ptr<double>(dst), a);
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

// Every read of spread stays inside the grid's `available` elements, and r > 0 keeps its
// promise about col_off; false with a ValueError set otherwise. Run before any write.
bool spread_reads_inside(const SpreadArgs& a, Index available) {
  const auto rows = std::minmax_element(a.row_off, a.row_off + a.H);
  const auto cols = std::minmax_element(a.col_off, a.col_off + a.W);
  const Index lowest = *rows.first + *cols.first;
  const Index reach = (a.planes / a.C - 1) * a.src_sn + (a.C - 1) * a.src_sc + *rows.second + *cols.second;
  if (*rows.first < 0 || *cols.first < 0 || reach >= available) {
    PyErr_Format(PyExc_ValueError, "spread offsets reach elements [%zd, %zd] outside the grid's %zd elements", lowest,
                 reach, available);
    return false;
  }
  for (Index w = 0; a.r > 0 && w < a.W; ++w)
    if (a.col_off[w] != (w / a.r) * a.col) {
      PyErr_Format(PyExc_ValueError, "col_offsets are not (w // %zd) * %zd", a.r, a.col);
      return false;
    }
  return true;
}

PyObject* py_spread(PyObject*, PyObject* args) {
  int dtype;
  unsigned long long src, dst, row_off, col_off;
  Index available;
  SpreadArgs a;
  if (!PyArg_ParseTuple(args, "iKnKnnnnnnKKnni", &dtype, &src, &available, &dst, &a.planes, &a.C, &a.H, &a.W,
                        &a.src_sn, &a.src_sc, &row_off, &col_off, &a.r, &a.col, &a.threads))
    return nullptr;
  if (!valid(dtype, a.C, a.threads) || a.r < 0 || a.H < 1 || a.W < 1 || a.planes < a.C || a.src_sn < 0 ||
      a.src_sc < 0) {
    PyErr_SetString(PyExc_ValueError,
                    "spread: need dtype 0 or 1, C >= 1, threads >= 1, r >= 0, H, W >= 1, N >= 1 and grid strides >= 0");
    return nullptr;
  }
  a.row_off = ptr<const int64_t>(row_off);
  a.col_off = ptr<const int64_t>(col_off);
  if (!spread_reads_inside(a, available)) return nullptr;
  Py_BEGIN_ALLOW_THREADS;
  if (dtype == 0)
    spread(ptr<const float>(src), ptr<float>(dst), a);
  else
    spread(ptr<const double>(src), ptr<double>(dst), a);
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

template <void (*F32)(const float*, float*, const TapArgs&), void (*F64)(const double*, double*, const TapArgs&)>
PyObject* py_taps(PyObject*, PyObject* args) {
  int dtype;
  unsigned long long src, dst;
  TapArgs a;
  if (!PyArg_ParseTuple(args, "iKKnndi", &dtype, &src, &dst, &a.elements, &a.taps, &a.scale, &a.threads))
    return nullptr;
  if (!valid(dtype, 1, a.threads) || a.elements < 0 || a.taps < 1) {
    PyErr_SetString(PyExc_ValueError, "taps: need dtype 0 or 1, elements >= 0, taps >= 1 and threads >= 1");
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS;
  if (dtype == 0)
    F32(ptr<const float>(src), ptr<float>(dst), a);
  else
    F64(ptr<const double>(src), ptr<double>(dst), a);
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* py_has_avx512(PyObject*, PyObject*) { return PyBool_FromLong(has_avx512()); }

PyMethodDef methods[] = {
    {"has_avx512", py_has_avx512, METH_NOARGS, "Whether patch_sums can use its AVX-512 loops on this CPU."},
    {"patch_sums", py_patch_sums, METH_VARARGS, "Patch sums of a contiguous (N, C, H, W) map (see the file header)."},
    {"spread", py_spread, METH_VARARGS, "Fill a contiguous (N, C, H, W) map from its patch grid (see the header)."},
    {"kernel_sums", py_taps<kernel_sums<float>, kernel_sums<double>>, METH_VARARGS,
     "Scaled spatial sums of a conv kernel's taps (see the header)."},
    {"repeat_taps", py_taps<repeat_taps<float>, repeat_taps<double>>, METH_VARARGS,
     "Scaled values repeated over every kernel tap (see the header)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "gradfilt.ops._kernels", "OpenMP passes of the filtered conv backward.",
                      -1, methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
