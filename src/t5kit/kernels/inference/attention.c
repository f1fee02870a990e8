/* T5 attention for a few queries, float32: out[b, i, h, :] = softmax_l(q[b,h,i,:] . k[b,h,l,:] + bias[b,h,i,l]) v.
 *
 * Why (issue #17): a decoding step attends 12 times (t5-small: 6 self, 6 cross) with one query per row, and
 * PyTorch's scaled_dot_product_attention spends ~95 us a call on that (2-core AMD EPYC, 8 heads, 64 keys),
 * for ~130k multiply-adds. This is the same arithmetic in one pass per (row, head), writing the output directly
 * in the [batch, queries, heads * d_kv] layout the output projection reads (no transpose copy).
 *
 * No 1/sqrt(d_kv) scale (T5 folds it into the weights). bias is additive (relative position bias, padding masks);
 * every tensor is addressed through element strides, so broadcast dimensions (stride 0) and cache views work;
 * the last dimension of q, k and v must be contiguous. Scores are kept in a buffer of max_keys floats per thread.
 */
#include <math.h>

#include "simd.h"

#define MAX_KEYS 4096

ALWAYS_INLINE float dot(const float *a, const float *b, int64_t d) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= d; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float total = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < d; i++) total += a[i] * b[i];
    return total;
}

/* scores[0:n] = exp(scores - top), returning their sum */
static inline float exp_and_sum(float *scores, int64_t n, float top) {
    const __m256 shift = _mm256_set1_ps(top);
    __m256 acc = _mm256_setzero_ps();
    int64_t l = 0;
    for (; l + 8 <= n; l += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + l), shift));
        _mm256_storeu_ps(scores + l, e);
        acc = _mm256_add_ps(acc, e);
    }
    float tail[8] = {0};
    for (int64_t t = l; t < n; t++) tail[t - l] = scores[t] - top;
    const __m256 e = exp8(_mm256_loadu_ps(tail));
    _mm256_storeu_ps(tail, e);
    for (int64_t t = l; t < n; t++) scores[t] = tail[t - l];
    float total = 0.0f;
    for (int64_t t = 0; t < n - l; t++) total += tail[t];
    return hsum(acc) + total;
}

/* o[0:d] = sum_l p[l] * inverse * v[l, 0:d], 64 columns at a time held in 8 registers across all keys (adding
 * into memory key by key waited on store-to-load forwarding each time) */
static inline void weighted_sum(float *o, const float *p, float inverse, const float *v, int64_t stride,
                                int64_t keys, int64_t d) {
    int64_t c = 0;
    for (; c + 64 <= d; c += 64) {
        __m256 acc[8];
        for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
        for (int64_t l = 0; l < keys; l++) {
            const __m256 pl = _mm256_set1_ps(p[l] * inverse);
            const float *vl = v + l * stride + c;
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(pl, _mm256_loadu_ps(vl + 8 * j), acc[j]);
        }
        for (int j = 0; j < 8; j++) _mm256_storeu_ps(o + c + 8 * j, acc[j]);
    }
    for (; c + 8 <= d; c += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t l = 0; l < keys; l++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(p[l] * inverse), _mm256_loadu_ps(v + l * stride + c), acc);
        _mm256_storeu_ps(o + c, acc);
    }
    for (; c < d; c++) {
        float acc = 0.0f;
        for (int64_t l = 0; l < keys; l++) acc += p[l] * inverse * v[l * stride + c];
        o[c] = acc;
    }
}

int t5kit_attention_max_keys(void) { return MAX_KEYS; }

/* One array of 24 int64 (one argument: ctypes converts each argument in Python, 7.5 us for 24 of them):
 * q, its strides b h i; k, strides b h l; v, strides b h l; bias (0: none), strides b h q l; out; batch, heads,
 * queries, keys, d; threads. Strides are in elements (the last dimension of q, k and v is contiguous; a bias
 * stride of 0 broadcasts): q [B, H, Q, D], k and v [B, H, L, D], bias [B, H, Q, L]; out is contiguous
 * [B, Q, H, D]. Returns 0, or -1 if L > MAX_KEYS. */
int t5kit_attention(const int64_t *p) {
    const float *q = (const float *)p[0], *k = (const float *)p[4], *v = (const float *)p[8];
    const float *bias = (const float *)p[12];
    float *out = (float *)p[17];
    const int64_t batch = p[18], heads = p[19], queries = p[20], keys = p[21], d = p[22];
    const int threads = (int)p[23];
    const int64_t q_strides[3] = {p[1], p[2], p[3]}, k_strides[3] = {p[5], p[6], p[7]};
    const int64_t v_strides[3] = {p[9], p[10], p[11]}, bias_strides[4] = {p[13], p[14], p[15], p[16]};
    if (keys > MAX_KEYS) return -1;
    const int64_t pairs = batch * heads;
    /* below ~256k multiply-adds one thread finishes before a team would start (8 heads, 64 keys of 64: 22 us
       alone, 27 us with a second thread) */
    const int team = team_size(pairs * queries * keys * d, 262144, threads);
#pragma omp parallel for schedule(static) num_threads(team)
    for (int64_t pair = 0; pair < pairs; pair++) {
        float scores[MAX_KEYS];
        const int64_t b = pair / heads, h = pair % heads;
        const float *kb = k + b * k_strides[0] + h * k_strides[1];
        const float *vb = v + b * v_strides[0] + h * v_strides[1];
        for (int64_t i = 0; i < queries; i++) {
            const float *qi = q + b * q_strides[0] + h * q_strides[1] + i * q_strides[2];
            const float *bi = bias ? bias + b * bias_strides[0] + h * bias_strides[1] + i * bias_strides[2] : 0;
            float top = -INFINITY;
            for (int64_t l = 0; l < keys; l++) {
                float s = dot(qi, kb + l * k_strides[2], d);
                if (bi) s += bi[l * bias_strides[3]];
                scores[l] = s;
                top = s > top ? s : top;
            }
            const float total = exp_and_sum(scores, keys, top);
            float *o = out + ((b * queries + i) * heads + h) * d;
            const float inverse = 1.0f / total;
            weighted_sum(o, scores, inverse, vb, v_strides[2], keys, d);
        }
    }
    return 0;
}
