/* What t5kit's native kernels (gemv.c, gemm_packed.c, attention.c, norm.c) share: the weight formats and how 8
 * of them are widened to float32 lanes, the horizontal sum, and the rule for how many threads a call gets. */
#ifndef T5KIT_SIMD_H
#define T5KIT_SIMD_H

#include <immintrin.h>
#include <stdint.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))

enum { F32 = 0, F16 = 1, I8 = 2 };  /* float32; IEEE half (F16C widens it); int8 with a float32 scale elsewhere */

ALWAYS_INLINE int64_t bytes_of(int fmt) { return fmt == F32 ? 4 : fmt == F16 ? 2 : 1; }

/* 8 weights from w + i as float32 lanes */
ALWAYS_INLINE __m256 load8(int fmt, const void *w, int64_t i) {
    if (fmt == F32) return _mm256_loadu_ps((const float *)w + i);
    if (fmt == F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)w + i))));
}

ALWAYS_INLINE float load1(int fmt, const void *w, int64_t i) {
    if (fmt == F32) return ((const float *)w)[i];
    if (fmt == F16) return _cvtsh_ss(((const uint16_t *)w)[i]);
    return (float)((const int8_t *)w)[i];
}

ALWAYS_INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The OpenMP team for a call of `work` multiply-adds: below `alone`, one thread finishes before a team would
 * start (each kernel states its measured threshold); above it, the caller's torch.get_num_threads(). */
ALWAYS_INLINE int team_size(int64_t work, int64_t alone, int threads) {
    return work >= alone && threads > 1 ? threads : 1;
}

#endif
