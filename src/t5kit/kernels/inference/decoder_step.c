/* One T5 decoder layer's decoding step in one call, float32 activations, for the few rows of a step:
 *   n = norm1(x); q, k, v = n Wq, n Wk, n Wv; the cache takes k, v at position `start`;
 *   s = x + attend(q, cache keys/values, self bias) Wo; n = norm2(s);
 *   s = s + attend(n Wcq, encoder keys/values, cross bias) Wco; n = norm3(s);
 *   out = s + act(n Wi) Wo, or s + (act(n Wi0) * n Wi1) Wo (gated).
 *
 * Why (issue #17): with every product and the attention already in native kernels, a one-row t5-small step on a
 * 2-core AMD EPYC (Zen 4) still spent ~2 ms of its ~9 in Python and PyTorch between them (py-spy: the native
 * products 70% of generate()); CTranslate2 runs its whole step in C++. This file strings the same kernels
 * (gemv.c, gemm_packed.c, attention.c, norm.c) together, so a layer costs one ctypes call. The arithmetic is
 * theirs, in the same order, plus the feed-forward's activation written here (relu; GELU's tanh form with tanh
 * from exp8); t5kit.kernels.inference.decoder checks every condition before calling, and
 * tests/kernels/test_decoder_layer_step.py bounds the result against float64.
 */
#include <stdlib.h>
#include <string.h>

#include "simd.h"

void t5kit_gemm_f32(const int64_t *p);
void t5kit_gemm_f16(const int64_t *p);
void t5kit_gemm_i8(const int64_t *p);
void t5kit_gemm_packed_f32(const int64_t *p);
void t5kit_gemm_packed_f16(const int64_t *p);
int t5kit_attention(const int64_t *p);
void t5kit_add_rms_norm(const int64_t *p);

/* A product's kernel: the entry point of gemv.c or gemm_packed.c that the layer's linear chose */
enum { GEMV_F32 = 0, GEMV_F16 = 1, GEMV_I8 = 2, PACKED_F32 = 3, PACKED_F16 = 4 };
enum { RELU = 0, GELU_TANH = 1 };
enum { PRODUCTS = 9, PRODUCT_ARGS = 5 };  /* q k v o, cross q, cross o, wi (wi_0), wi_1, wo: kind w scale n k */

/* y[rows, n] = x[rows, k] W^T by the product's kernel (pr: kind, weight, scale, n, k) */
static void product(const int64_t *pr, const float *x, float *y, int64_t rows, int threads) {
    const int64_t a[8] = {(int64_t)x, pr[1], pr[2], (int64_t)y, rows, pr[3], pr[4], threads};
    switch (pr[0]) {
    case GEMV_F32: t5kit_gemm_f32(a); break;
    case GEMV_F16: t5kit_gemm_f16(a); break;
    case GEMV_I8: t5kit_gemm_i8(a); break;
    case PACKED_F32: t5kit_gemm_packed_f32(a); break;
    default: t5kit_gemm_packed_f16(a); break;
    }
}

/* n = norm(x + h) with s = x + h written (h = 0: n = norm(x)); norm.c's arithmetic */
static void add_norm(const float *x, const float *h, float *s, const float *w, float *n, int64_t rows, int64_t d,
                     int64_t eps_bits) {
    const int64_t a[8] = {(int64_t)x, (int64_t)h, (int64_t)w, (int64_t)s, (int64_t)n, rows, d, eps_bits};
    t5kit_add_rms_norm(a);
}

/* gelu(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), tanh(z) = 1 - 2 / (e^(2z) + 1) */
ALWAYS_INLINE __m256 gelu_tanh8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 inner = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                                       _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), x),
                                                       _mm256_mul_ps(x, x), x));
    const __m256 e = exp8(_mm256_add_ps(inner, inner));
    const __m256 t = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(one, t));
}

static float gelu_tanh1(float x) {
    float lanes[8] = {x};
    _mm256_storeu_ps(lanes, gelu_tanh8(_mm256_loadu_ps(lanes)));
    return lanes[0];
}

/* a = act(a) (gate = 0) or act(a) * gate, over n values */
static void activate(float *a, const float *gate_linear, int64_t n, int activation) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(a + i);
        v = activation == RELU ? _mm256_max_ps(v, _mm256_setzero_ps()) : gelu_tanh8(v);
        if (gate_linear) v = _mm256_mul_ps(v, _mm256_loadu_ps(gate_linear + i));
        _mm256_storeu_ps(a + i, v);
    }
    for (; i < n; i++) {
        float v = activation == RELU ? (a[i] > 0.0f ? a[i] : 0.0f) : gelu_tanh1(a[i]);
        a[i] = gate_linear ? v * gate_linear[i] : v;
    }
}

/* attention.c's argument array: q (strides b h i), k (b h l), v (b h l), bias (b h q l), out, sizes, threads */
static int attend(const float *q, int64_t qb, int64_t qh, int64_t qi, const int64_t *k, const int64_t *v,
                  const int64_t *bias, float *out, int64_t batch, int64_t heads, int64_t queries, int64_t keys,
                  int64_t d, int threads) {
    const int64_t a[24] = {(int64_t)q, qb, qh, qi, k[0], k[1], k[2], k[3], v[0], v[1], v[2], v[3],
                           bias[0], bias[1], bias[2], bias[3], bias[4], (int64_t)out, batch, heads, queries, keys,
                           d, threads};
    return t5kit_attention(a);
}

/* One array of int64 (ctypes converts each argument in Python):
 *   0 x [rows, d_model] (read), 1 out [rows, d_model] (written), 2 rows, 3 d_model, 4 heads, 5 d_kv, 6 d_ff,
 *   7 threads, 8 gated, 9 activation, 10 the norms' eps (bits of a double), 11-13 the three norms' weights,
 *   14-58 the nine products (kind, weight, scale, n, k each; wi_1 unused without gating),
 *   59-62 self keys: address of row 0 / head 0 / position 0 of this layer's cache, strides b h l (elements),
 *   63-66 self values likewise, 67 start (the position this step writes),
 *   68-72 self bias (0: none) and its strides b h q l, broadcast dimensions 0,
 *   73-76 encoder keys and strides b h l, 77-80 encoder values, 81 source length, 82 beams (decoder rows per
 *   encoder row), 83-87 cross bias (0: none) and its strides b h q l.
 * Returns 0, or the attention kernel's -1 when the keys exceed its limit (nothing is written to out then). */
int t5kit_decoder_layer(const int64_t *p) {
    const float *x = (const float *)p[0];
    float *out = (float *)p[1];
    const int64_t rows = p[2], d = p[3], heads = p[4], d_kv = p[5], d_ff = p[6];
    const int threads = (int)p[7], gated = (int)p[8], activation = (int)p[9];
    const int64_t eps = p[10], inner = heads * d_kv, start = p[67], beams = p[82];
    const int64_t *pr = p + 14;
    float *work = malloc(sizeof(float) * rows * (d + 4 * inner + d + 2 * d_ff));
    if (!work) return -2;
    float *normed = work, *q = normed + rows * d, *k = q + rows * inner, *v = k + rows * inner;
    float *attn = v + rows * inner, *h = attn + rows * inner, *ff = h + rows * d, *ff_linear = ff + rows * d_ff;
    int status = 0;

    add_norm(x, 0, 0, (const float *)p[11], normed, rows, d, eps);
    product(pr + 0 * PRODUCT_ARGS, normed, q, rows, threads);
    product(pr + 1 * PRODUCT_ARGS, normed, k, rows, threads);
    product(pr + 2 * PRODUCT_ARGS, normed, v, rows, threads);
    float *self_k = (float *)p[59], *self_v = (float *)p[63];
    for (int64_t r = 0; r < rows; r++)
        for (int64_t hd = 0; hd < heads; hd++) {
            memcpy(self_k + r * p[60] + hd * p[61] + start * p[62], k + r * inner + hd * d_kv, sizeof(float) * d_kv);
            memcpy(self_v + r * p[64] + hd * p[65] + start * p[66], v + r * inner + hd * d_kv, sizeof(float) * d_kv);
        }
    /* q as [rows, heads, 1, d_kv]; keys 0..start of this layer's cache */
    status = attend(q, inner, d_kv, 0, p + 59, p + 63, p + 68, attn, rows, heads, 1, start + 1, d_kv, threads);
    if (status) goto done;
    product(pr + 3 * PRODUCT_ARGS, attn, h, rows, threads);
    add_norm(x, h, out, (const float *)p[12], normed, rows, d, eps);

    product(pr + 4 * PRODUCT_ARGS, normed, q, rows, threads);
    /* an encoder row's beams are the queries of one attention: q as [rows / beams, heads, beams, d_kv] */
    status = attend(q, beams * inner, d_kv, inner, p + 73, p + 77, p + 83, attn, rows / beams, heads, beams, p[81],
                    d_kv, threads);
    if (status) goto done;
    product(pr + 5 * PRODUCT_ARGS, attn, h, rows, threads);
    add_norm(out, h, out, (const float *)p[13], normed, rows, d, eps);

    product(pr + 6 * PRODUCT_ARGS, normed, ff, rows, threads);
    if (gated) product(pr + 7 * PRODUCT_ARGS, normed, ff_linear, rows, threads);
    activate(ff, gated ? ff_linear : 0, rows * d_ff, activation);
    product(pr + 8 * PRODUCT_ARGS, ff, h, rows, threads);
    for (int64_t i = 0; i < rows * d; i++) out[i] += h[i];
done:
    free(work);
    return status;
}
