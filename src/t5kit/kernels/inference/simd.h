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

/* e^x for 8 lanes: Cody-Waite reduction by ln 2 and Cephes' degree-6 polynomial (~1 ulp, like expf); inputs
 * below -87.3 (masked positions) give exactly 0. One expf call per score took most of a one-query call. */
ALWAYS_INLINE __m256 exp8(__m256 x) {
    const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_GE_OQ);
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.37f)), _mm256_set1_ps(-87.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), live);
}

#endif
