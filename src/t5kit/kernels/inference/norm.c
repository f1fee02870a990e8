/* T5's residual add and RMS norm for the few float32 rows of a decoding step, in one call:
 *   s = x + h (when h is given), y = (s * rsqrt(mean(s^2) + eps)) * w.
 *
 * Why it exists (issue #17): in a one-row decoding step each of PyTorch's small operations costs several
 * microseconds of dispatch, more right after a large matrix product has left the caches cold; a decoder layer's
 * three residual adds and three norms were ~20 of them. One ctypes call with its arguments packed costs ~1.5 us.
 * The sum of squares is accumulated in double (more accurate than the float32 reference's, in another order),
 * rsqrt rounded once to float32, then the two products rounded as the reference rounds them: the result is
 * within 3 float32 roundings of the exact value (tests/kernels/test_decoder_step.py holds that bound).
 */
#include <math.h>
#include <string.h>

#include "simd.h"

ALWAYS_INLINE double hsum_pd(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/* p: x, h (0: none), w, s_out (the sum; with h only), y_out, rows, n, eps (the bits of a double) */
void t5kit_add_rms_norm(const int64_t *p) {
    const float *x = (const float *)p[0], *h = (const float *)p[1], *w = (const float *)p[2];
    float *s_out = (float *)p[3], *y = (float *)p[4];
    const int64_t rows = p[5], n = p[6];
    double eps;
    memcpy(&eps, &p[7], sizeof eps);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n, *hr = h ? h + r * n : 0;
        float *sr = h ? s_out + r * n : 0, *yr = y + r * n;
        __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(xr + i);
            if (hr) {
                v = _mm256_add_ps(v, _mm256_loadu_ps(hr + i));
                _mm256_storeu_ps(sr + i, v);
            }
            __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
            acc0 = _mm256_fmadd_pd(lo, lo, acc0);
            acc1 = _mm256_fmadd_pd(hi, hi, acc1);
        }
        double sum = hsum_pd(_mm256_add_pd(acc0, acc1));
        for (; i < n; i++) {
            float v = xr[i];
            if (hr) sr[i] = v = v + hr[i];
            sum += (double)v * v;
        }
        const float rstd = (float)(1.0 / sqrt(sum / (double)n + eps));
        const float *src = hr ? sr : xr;  /* the sum, already rounded to float32 (or x itself) */
        const __m256 rs = _mm256_set1_ps(rstd);
        for (i = 0; i + 8 <= n; i += 8)
            _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(src + i), rs), _mm256_loadu_ps(w + i)));
        for (; i < n; i++) yr[i] = (src[i] * rstd) * w[i];
    }
}
