/* The 4-bit matmul for AVX2 + FMA (x86-64). A group's 16 bytes become 32 unsigned nibbles in value order
 * (low nibbles in the lower lane, high nibbles in the upper), multiplied with the signed int8 activations by
 * maddubs (15 * 128 * 2 fits int16) or one vpdpbusd with AVX-VNNI. Four rows share each load of x. */
#include "kernels_q4.h"

#if defined(HAVE_KERNELS_AVX2)
#include <immintrin.h>
#include <stddef.h>

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float half(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return q4_half(h);
#endif
}

/* 32 nibbles of one group in value order, as unsigned bytes */
static inline __m256i nibbles(const uint8_t *w) {
    __m128i raw = _mm_loadu_si128((const __m128i *)w);
    __m128i mask = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), mask), _mm_and_si128(raw, mask));
}

/* the group's 32 products nibble * x as 8 floats */
static inline __m256 group_dot(const uint8_t *w, __m256i xv) {
#if defined(__AVXVNNI__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), nibbles(w), xv));
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles(w), xv));
#else
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(nibbles(w), xv), _mm256_set1_epi16(1)));
#endif
}

/* sum_g m[g] * xsum[g] for one row: eight fp16 m at a time */
static inline float min_terms(const uint16_t *m, const float *xsum, int groups) {
    int g = 0;
    float s = 0.0f;
#if defined(__F16C__)
    __m256 acc = _mm256_setzero_ps();
    for (; g + 8 <= groups; g += 8)
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + g))), _mm256_loadu_ps(xsum + g), acc);
    s = hsum8(acc);
#endif
    for (; g < groups; g++) s += half(m[g]) * xsum[g];
    return s;
}

void avx2_matmul_q4(float *out, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, const QVec *x, int n,
                    int row0, int row1) {
    float xsum[Q4_MAX_GROUPS];
    q4_group_sums(xsum, x, n);
    int groups = n / Q4_GROUP;
    size_t row_bytes = (size_t)n / 2;
    int i = row0;
    for (; i + 4 <= row1; i += 4) {
        const uint8_t *r0 = wq + (size_t)i * row_bytes, *r1 = r0 + row_bytes, *r2 = r1 + row_bytes,
                      *r3 = r2 + row_bytes;
        const uint16_t *d0 = wd + (size_t)i * groups, *d1 = d0 + groups, *d2 = d1 + groups, *d3 = d2 + groups;
        const char *ahead = (const char *)(r0 + 4 * row_bytes);
        __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
        for (int g = 0; g < groups; g++) {
            size_t b = (size_t)g * (Q4_GROUP / 2);
            _mm_prefetch(ahead + 4 * b, _MM_HINT_T0); /* the next 4 rows: 4 x 16 bytes per group */
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + (size_t)g * Q4_GROUP));
            float sx = x->s[g];
            f0 = _mm256_fmadd_ps(group_dot(r0 + b, xv), _mm256_set1_ps(half(d0[g]) * sx), f0);
            f1 = _mm256_fmadd_ps(group_dot(r1 + b, xv), _mm256_set1_ps(half(d1[g]) * sx), f1);
            f2 = _mm256_fmadd_ps(group_dot(r2 + b, xv), _mm256_set1_ps(half(d2[g]) * sx), f2);
            f3 = _mm256_fmadd_ps(group_dot(r3 + b, xv), _mm256_set1_ps(half(d3[g]) * sx), f3);
        }
        const uint16_t *m0 = wm + (size_t)i * groups;
        out[i] = hsum8(f0) + min_terms(m0, xsum, groups);
        out[i + 1] = hsum8(f1) + min_terms(m0 + groups, xsum, groups);
        out[i + 2] = hsum8(f2) + min_terms(m0 + 2 * groups, xsum, groups);
        out[i + 3] = hsum8(f3) + min_terms(m0 + 3 * groups, xsum, groups);
    }
    for (; i < row1; i++) {
        const uint8_t *r = wq + (size_t)i * row_bytes;
        const uint16_t *d = wd + (size_t)i * groups;
        __m256 f = _mm256_setzero_ps();
        for (int g = 0; g < groups; g++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + (size_t)g * Q4_GROUP));
            f = _mm256_fmadd_ps(group_dot(r + (size_t)g * (Q4_GROUP / 2), xv), _mm256_set1_ps(half(d[g]) * x->s[g]), f);
        }
        out[i] = hsum8(f) + min_terms(wm + (size_t)i * groups, xsum, groups);
    }
}
#else
typedef int kernels_q4_avx2_unused; /* ISO C forbids an empty translation unit */
#endif
