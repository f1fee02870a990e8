/* t5kit's own small-row GEMM for x86 with AVX2 + FMA + F16C: y[r, n] = sum_k x[r, k] * w[n, k] (* scale[n]).
 *
 * Why it exists (issue #17): at one to a few rows a decoding step is a stream of weights from DRAM, and on a
 * 2-core AMD EPYC (AVX2) every kernel PyTorch offers streams a one-row fp32 product at 8-16 GB/s where the
 * machine reads at ~23 GB/s. This one reads each weight row once per call with plain sequential loads, for
 * every row of x at once, in three weight formats:
 *   f32: float32 weights;
 *   f16: IEEE half weights (F16C widens them), float32 activations and accumulation;
 *   i8:  int8 weights with one float32 scale per output row, float32 activations (weight-only int8).
 * Accumulation is float32 in any order (8 lanes, then a horizontal sum): the rounding-error bound of
 * t5kit.kernels.inference.linear.error_bound holds. Built at first use by t5kit.kernels.inference.native with the
 * system's C compiler; OpenMP binds to the libgomp PyTorch has loaded (same soname), so its threads are
 * PyTorch's and the thread count is passed in by the caller (torch.get_num_threads()).
 */
#include "simd.h"

ALWAYS_INLINE const void *row_of(int fmt, const void *w, int64_t n, int64_t k) {
    return (const char *)w + n * k * bytes_of(fmt);
}

/* Fetch as many bytes of the next tile's weight rows (contiguous after this tile's) as columns [i, i + step) of
 * this tile take: the hardware prefetcher alone restarts at every short row (DRAM-streaming int8 6.7 -> 18 GB/s,
 * fp32 13.3 -> 14.4 GB/s at one row; fetching 2 or 4 tiles ahead measured the same as 1). */
ALWAYS_INLINE void prefetch_next_tile(int fmt, const void *w, const int NT, int64_t n0, int64_t n, int64_t k,
                                      int64_t i, const int64_t step) {
    const int64_t bytes = bytes_of(fmt);
    const char *ahead = (const char *)row_of(fmt, w, n0 + NT, k);
    const int64_t ahead_bytes = (n0 + 2 * NT <= n ? NT : 0) * k * bytes;
#pragma GCC unroll 8
    for (int64_t at = (i * bytes * NT + 63) / 64 * 64; at < (i + step) * bytes * NT; at += 64)
        if (at < ahead_bytes) _mm_prefetch(ahead + at, _MM_HINT_T0);
}

/* R rows of x against NT consecutive weight rows starting at w's row n0: R * NT accumulators in registers. */
ALWAYS_INLINE void tile(int fmt, const int R, const int NT, const float *x, const void *w, const float *scale,
                        float *y, int64_t n0, int64_t n, int64_t k) {
    __m256 acc[4][4];
    const void *wr[4];
#pragma GCC unroll 4
    for (int j = 0; j < NT; j++) wr[j] = row_of(fmt, w, n0 + j, k);
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++) acc[r][j] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        prefetch_next_tile(fmt, w, NT, n0, n, k, i, 8);
        __m256 wv[4];
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++) wv[j] = load8(fmt, wr[j], i);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m256 xv = _mm256_loadu_ps(x + r * k + i);
#pragma GCC unroll 4
            for (int j = 0; j < NT; j++) acc[r][j] = _mm256_fmadd_ps(xv, wv[j], acc[r][j]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++) {
            float s = hsum(acc[r][j]);
            for (int64_t t = i; t < k; t++) s += x[r * k + t] * load1(fmt, wr[j], t);
            y[r * n + n0 + j] = fmt == I8 ? s * scale[n0 + j] : s;
        }
}

/* One row of x against 4 weight rows, with two accumulators per weight row (even and odd steps of 8): an FMA
 * waits ~4 cycles for the previous one into the same register, so 4 chains issued one FMA a cycle where the
 * core has two (cache-hot 2048 x 512 at one row, one thread: 180 us with 4 chains, MKL 111 us). */
ALWAYS_INLINE void tile_row(int fmt, const float *x, const void *w, const float *scale, float *y, int64_t n0,
                            int64_t n, int64_t k) {
    const int NT = 4;
    __m256 even[4], odd[4];
    const void *wr[4];
#pragma GCC unroll 4
    for (int j = 0; j < NT; j++) {
        wr[j] = row_of(fmt, w, n0 + j, k);
        even[j] = _mm256_setzero_ps();
        odd[j] = _mm256_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        prefetch_next_tile(fmt, w, NT, n0, n, k, i, 16);
        const __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++) {
            even[j] = _mm256_fmadd_ps(x0, load8(fmt, wr[j], i), even[j]);
            odd[j] = _mm256_fmadd_ps(x1, load8(fmt, wr[j], i + 8), odd[j]);
        }
    }
    if (i + 8 <= k) {
        const __m256 x0 = _mm256_loadu_ps(x + i);
#pragma GCC unroll 4
        for (int j = 0; j < NT; j++) even[j] = _mm256_fmadd_ps(x0, load8(fmt, wr[j], i), even[j]);
        i += 8;
    }
#pragma GCC unroll 4
    for (int j = 0; j < NT; j++) {
        float s = hsum(_mm256_add_ps(even[j], odd[j]));
        for (int64_t t = i; t < k; t++) s += x[t] * load1(fmt, wr[j], t);
        y[n0 + j] = fmt == I8 ? s * scale[n0 + j] : s;
    }
}

/* Weight rows [n0, n0 + NT) against every row of x, in chunks of x rows. */
ALWAYS_INLINE void columns(int fmt, const int NT, const float *x, const void *w, const float *scale, float *y,
                           int64_t rows, int64_t n0, int64_t n, int64_t k) {
    int64_t r = 0;
    if (NT == 4) {
        for (; r + 2 <= rows; r += 2) tile(fmt, 2, 4, x + r * k, w, scale, y + r * n, n0, n, k);
        for (; r < rows; r++) tile_row(fmt, x + r * k, w, scale, y + r * n, n0, n, k);
    } else if (NT == 2) {
        for (; r + 4 <= rows; r += 4) tile(fmt, 4, 2, x + r * k, w, scale, y + r * n, n0, n, k);
        for (; r + 2 <= rows; r += 2) tile(fmt, 2, 2, x + r * k, w, scale, y + r * n, n0, n, k);
        for (; r < rows; r++) tile(fmt, 1, 2, x + r * k, w, scale, y + r * n, n0, n, k);
    } else {
        for (; r + 4 <= rows; r += 4) tile(fmt, 4, 1, x + r * k, w, scale, y + r * n, n0, n, k);
        for (; r < rows; r++) tile(fmt, 1, 1, x + r * k, w, scale, y + r * n, n0, n, k);
    }
}

/* One function per weight format, each with its own parallel loop: OpenMP outlines the loop body before
 * inlining, so a format passed as an argument would stay a run-time branch in the inner loop (measured: the
 * cache-hot int8 kernel ran at a third of its speed that way). */
#define DEFINE_GEMM(NAME, FMT, WTYPE)                                                                           \
    static void NAME##_body(const float *x, const WTYPE *w, const float *scale, float *y, int64_t rows, int64_t n, \
                            int64_t k, int threads) {                                                           \
        /* one or two rows: 4 weight rows a tile (the stream is the cost); more: 2 weight rows x 4 x rows */    \
        const int64_t nt = rows <= 2 ? 4 : 2;                                                                   \
        const int64_t tiles = n / nt;                                                                           \
        /* below ~64k multiply-adds the team's wake-up costs more than a second thread gives */                 \
        const int team = team_size(rows * n * k, 65536, threads);                                               \
        _Pragma("omp parallel for schedule(static) num_threads(team)")                                          \
        for (int64_t t = 0; t < tiles; t++) {                                                                   \
            if (nt == 4) columns(FMT, 4, x, w, scale, y, rows, t * 4, n, k);                                    \
            else columns(FMT, 2, x, w, scale, y, rows, t * 2, n, k);                                            \
        }                                                                                                       \
        for (int64_t n0 = tiles * nt; n0 < n; n0++) columns(FMT, 1, x, w, scale, y, rows, n0, n, k);           \
    }                                                                                                           \
    void NAME(const int64_t *p) {                                                                               \
        NAME##_body((const float *)p[0], (const WTYPE *)p[1], (const float *)p[2], (float *)p[3], p[4], p[5],  \
                    p[6], (int)p[7]);                                                                           \
    }

/* Each entry point takes one array of 8 int64: x, w, scale, y (addresses), rows, n, k, threads. One argument,
 * because ctypes converts each argument in Python: 24 typed arguments cost 7.5 us a call, one packed array 1.5.
 * scale: one float per weight row, read by i8 only (0 for the others). */
DEFINE_GEMM(t5kit_gemm_f32, F32, float)
DEFINE_GEMM(t5kit_gemm_f16, F16, uint16_t)
DEFINE_GEMM(t5kit_gemm_i8, I8, int8_t)

int t5kit_gemv_abi(void) { return 4; }
