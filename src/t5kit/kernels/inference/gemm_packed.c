/* y[r, n] = sum_k x[r, k] * w[n, k] for batches of rows (a decoding step of 16 rows, a beam search), on a weight
 * packed once into blocks of 16 output columns: packed[b, k, 0:16] = w[16 b : 16 b + 16, k] (zero-padded).
 *
 * Why (issue #17): at 16 rows a step's products are compute-bound, and PyTorch's kernels run them at ~44 GFLOP/s
 * on a 2-core AMD EPYC (Zen 3; t5-small's weights at 16 rows: oneDNN 28.5-35.8 ms a pass) where the cores peak
 * near 157. This is the classic register-blocked micro-kernel: per step of k, two loads of the packed block and
 * one broadcast per row feed 2 FMAs per row, 6 rows at a time (12 accumulators). Each output is one float32 chain
 * over k in order, so the rounding-error bound of t5kit.kernels.inference.linear.error_bound holds. Weights are
 * float32 or float16 (widened by F16C as they are loaded).
 */
#include "simd.h"

#define BLOCK 16

/* R rows of x (row stride k) against packed block `block` ([k][16]); writes columns [col, col + width). */
ALWAYS_INLINE void micro(int fmt, const int R, const float *x, const void *block, int64_t k, float *y, int64_t n,
                         int64_t col, int64_t width) {
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i++) {
        const __m256 w0 = load8(fmt, block, i * BLOCK), w1 = load8(fmt, block, i * BLOCK + 8);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m256 xv = _mm256_broadcast_ss(x + r * k + i);
            acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        if (width == BLOCK) {
            _mm256_storeu_ps(y + r * n + col, acc[r][0]);
            _mm256_storeu_ps(y + r * n + col + 8, acc[r][1]);
        } else {  /* the last, partial block: only the real columns are written */
            float out[BLOCK];
            _mm256_storeu_ps(out, acc[r][0]);
            _mm256_storeu_ps(out + 8, acc[r][1]);
            for (int64_t c = 0; c < width; c++) y[r * n + col + c] = out[c];
        }
    }
}

#define DEFINE_PACKED(NAME, FMT, WTYPE)                                                                        \
    static void NAME##_body(const float *x, const WTYPE *packed, float *y, int64_t rows, int64_t n, int64_t k, \
                            int threads) {                                                                    \
        const int64_t blocks = (n + BLOCK - 1) / BLOCK;                                                       \
        const int team = team_size(rows * n * k, 65536, threads);                                             \
        _Pragma("omp parallel for schedule(static) num_threads(team)")                                        \
        for (int64_t b = 0; b < blocks; b++) {                                                                \
            const WTYPE *block = packed + b * k * BLOCK;                                                      \
            const int64_t col = b * BLOCK, width = n - col < BLOCK ? n - col : BLOCK;                         \
            int64_t r = 0;                                                                                    \
            for (; r + 6 <= rows; r += 6) micro(FMT, 6, x + r * k, block, k, y + r * n, n, col, width);       \
            switch (rows - r) {                                                                               \
            case 5: micro(FMT, 5, x + r * k, block, k, y + r * n, n, col, width); break;                      \
            case 4: micro(FMT, 4, x + r * k, block, k, y + r * n, n, col, width); break;                      \
            case 3: micro(FMT, 3, x + r * k, block, k, y + r * n, n, col, width); break;                      \
            case 2: micro(FMT, 2, x + r * k, block, k, y + r * n, n, col, width); break;                      \
            case 1: micro(FMT, 1, x + r * k, block, k, y + r * n, n, col, width); break;                      \
            default: break;                                                                                   \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    void NAME(const int64_t *p) {                                                                             \
        NAME##_body((const float *)p[0], (const WTYPE *)p[1], (float *)p[3], p[4], p[5], p[6], (int)p[7]);    \
    }

/* The same packed argument array as gemv.c's entry points (x, packed weight, unused, y, rows, n, k, threads). */
DEFINE_PACKED(t5kit_gemm_packed_f32, F32, float)
DEFINE_PACKED(t5kit_gemm_packed_f16, F16, uint16_t)
