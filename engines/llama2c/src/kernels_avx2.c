/* AVX2 + FMA kernels (x86-64). int8 dot products use the sign trick: |x| (unsigned) times sign(x)*w (signed)
 * with maddubs, or one vpdpbusd where the CPU has AVX-VNNI. Shapes they do not cover (group sizes that are
 * not a multiple of 32) fall back to the portable kernels. */
#include "kernels.h"

#if defined(HAVE_KERNELS_AVX2)
#include <immintrin.h>
#include <math.h>
#include <stddef.h>

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#if defined(__AVX512F__)
/* AVX-512 where the compiler targets it (-march=native on such a CPU): one row at a time, four independent
 * accumulators of 16 floats (one streaming row keeps the hardware prefetcher on track). */
static void matmul_f32(float *out, const float *w, const float *x, int n, int row0, int row1) {
    int n64 = n & ~63, n16 = n & ~15;
    for (int i = row0; i < row1; i++) {
        const float *r = w + (size_t)i * n;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int k = 0;
        for (; k < n64; k += 64) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + k), _mm512_loadu_ps(x + k), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r + k + 16), _mm512_loadu_ps(x + k + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r + k + 32), _mm512_loadu_ps(x + k + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r + k + 48), _mm512_loadu_ps(x + k + 48), a3);
        }
        for (; k < n16; k += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r + k), _mm512_loadu_ps(x + k), a0);
        float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        for (; k < n; k++) s += r[k] * x[k];
        out[i] = s;
    }
}
#else
/* Four rows at a time share each load of x. */
static void matmul_f32(float *out, const float *w, const float *x, int n, int row0, int row1) {
    int i = row0;
    int n8 = n & ~7;
    for (; i + 4 <= row1; i += 4) {
        const float *r0 = w + (size_t)i * n, *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < n8; k += 8) {
            __m256 xv = _mm256_loadu_ps(x + k);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + k), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + k), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + k), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + k), xv, a3);
        }
        float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
        for (int k = n8; k < n; k++) {
            s0 += r0[k] * x[k];
            s1 += r1[k] * x[k];
            s2 += r2[k] * x[k];
            s3 += r3[k] * x[k];
        }
        out[i] = s0;
        out[i + 1] = s1;
        out[i + 2] = s2;
        out[i + 3] = s3;
    }
    for (; i < row1; i++) {
        const float *r = w + (size_t)i * n;
        __m256 a = _mm256_setzero_ps();
        for (int k = 0; k < n8; k += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(r + k), _mm256_loadu_ps(x + k), a);
        float s = hsum(a);
        for (int k = n8; k < n; k++) s += r[k] * x[k];
        out[i] = s;
    }
}
#endif

/* Eight int32 partial sums of 32 products w[k] * x[k] (int8 x int8). */
static inline __m256i dot32(__m256i acc, __m256i w, __m256i x) {
    __m256i ax = _mm256_sign_epi8(x, x); /* |x|, as unsigned bytes */
    __m256i sw = _mm256_sign_epi8(w, x); /* w * sign(x) */
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, ax, sw);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, ax, sw);
#else
    __m256i p16 = _mm256_maddubs_epi16(ax, sw);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
#endif
}

/* The 32 products of one group of row r with x (|x| and the signs of x given), as 8 floats. */
static inline __m256 group32(const int8_t *r, __m256i ax, __m256i xv) {
    __m256i sw = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)r), xv);
#if defined(__AVXVNNI__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), ax, sw));
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sw));
#else
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), _mm256_set1_epi16(1)));
#endif
}

/* Groups of 32 (GGUF Q8_0's block, what converted models use): four rows at a time share each load of x and
 * its |x|; the four rows' scales for a group are one 4-float load away from each other's rows only, so each is
 * broadcast and multiplied by the group's activation scale. The next rows are prefetched a cache line at a time:
 * with dim 576 a group of rows is small, and the hardware prefetcher alone leaves the loads waiting on memory. */
static void matmul_q8_gs32(float *out, const int8_t *wq, const float *ws, const QVec *x, int n, int row0,
                           int row1) {
    int groups = n / 32;
    int i = row0;
    for (; i + 4 <= row1; i += 4) {
        const int8_t *r0 = wq + (size_t)i * n, *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
        const float *s0 = ws + (size_t)i * groups, *s1 = s0 + groups, *s2 = s1 + groups, *s3 = s2 + groups;
        const char *ahead = (const char *)(r0 + 4 * (size_t)n);
        __m256 f0 = _mm256_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
        for (int g = 0; g < groups; g++) {
            int k = g * 32;
            _mm_prefetch(ahead + 4 * (size_t)k, _MM_HINT_T0); /* the next 4 rows: 4 x 32 bytes per group */
            _mm_prefetch(ahead + 4 * (size_t)k + 64, _MM_HINT_T0);
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + k));
            __m256i ax = _mm256_sign_epi8(xv, xv);
            __m256 sx = _mm256_broadcast_ss(x->s + g);
            f0 = _mm256_fmadd_ps(group32(r0 + k, ax, xv), _mm256_mul_ps(_mm256_broadcast_ss(s0 + g), sx), f0);
            f1 = _mm256_fmadd_ps(group32(r1 + k, ax, xv), _mm256_mul_ps(_mm256_broadcast_ss(s1 + g), sx), f1);
            f2 = _mm256_fmadd_ps(group32(r2 + k, ax, xv), _mm256_mul_ps(_mm256_broadcast_ss(s2 + g), sx), f2);
            f3 = _mm256_fmadd_ps(group32(r3 + k, ax, xv), _mm256_mul_ps(_mm256_broadcast_ss(s3 + g), sx), f3);
        }
        out[i] = hsum(f0);
        out[i + 1] = hsum(f1);
        out[i + 2] = hsum(f2);
        out[i + 3] = hsum(f3);
    }
    for (; i < row1; i++) {
        const int8_t *r = wq + (size_t)i * n;
        const float *s = ws + (size_t)i * groups;
        __m256 f = _mm256_setzero_ps();
        for (int g = 0; g < groups; g++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + g * 32));
            f = _mm256_fmadd_ps(group32(r + g * 32, _mm256_sign_epi8(xv, xv), xv), _mm256_set1_ps(s[g] * x->s[g]), f);
        }
        out[i] = hsum(f);
    }
}

/* Two rows at a time share each load of x; per group the int32 sums become floats scaled by sw * sx. */
static void matmul_q8(float *out, const int8_t *wq, const float *ws, const QVec *x, int n, int gs, int row0,
                      int row1) {
    if (gs == 32) {
        matmul_q8_gs32(out, wq, ws, x, n, row0, row1);
        return;
    }
    if (gs % 32 != 0) {
        portable_matmul_q8(out, wq, ws, x, n, gs, row0, row1);
        return;
    }
    int groups = n / gs;
    int i = row0;
    for (; i + 2 <= row1; i += 2) {
        const int8_t *r0 = wq + (size_t)i * n, *r1 = r0 + n;
        const float *s0 = ws + (size_t)i * groups, *s1 = s0 + groups;
        __m256 f0 = _mm256_setzero_ps(), f1 = f0;
        for (int g = 0; g < groups; g++) {
            __m256i a0 = _mm256_setzero_si256(), a1 = a0;
            for (int k = g * gs; k < (g + 1) * gs; k += 32) {
                if ((k & 63) == 0) { /* the next two rows, a line at a time: without it, large models stall */
                    _mm_prefetch((const char *)(r0 + 2 * (size_t)n + k), _MM_HINT_T0);
                    _mm_prefetch((const char *)(r1 + 2 * (size_t)n + k), _MM_HINT_T0);
                }
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + k));
                a0 = dot32(a0, _mm256_loadu_si256((const __m256i *)(r0 + k)), xv);
                a1 = dot32(a1, _mm256_loadu_si256((const __m256i *)(r1 + k)), xv);
            }
            float sx = x->s[g];
            f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), _mm256_set1_ps(s0[g] * sx), f0);
            f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), _mm256_set1_ps(s1[g] * sx), f1);
        }
        out[i] = hsum(f0);
        out[i + 1] = hsum(f1);
    }
    for (; i < row1; i++) {
        const int8_t *r = wq + (size_t)i * n;
        const float *s = ws + (size_t)i * groups;
        __m256 f = _mm256_setzero_ps();
        for (int g = 0; g < groups; g++) {
            __m256i a = _mm256_setzero_si256();
            for (int k = g * gs; k < (g + 1) * gs; k += 32)
                a = dot32(a, _mm256_loadu_si256((const __m256i *)(r + k)),
                          _mm256_loadu_si256((const __m256i *)(x->q + k)));
            f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(s[g] * x->s[g]), f);
        }
        out[i] = hsum(f);
    }
}

/* 8 int8 weights -> 8 floats */
static inline __m256 load8_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

static void matmul_q8_f32(float *out, const int8_t *wq, const float *ws, const float *x, int n, int gs,
                          int row0, int row1) {
    for (int i = row0; i < row1; i++) {
        size_t base = (size_t)i * n;
        const int8_t *row = wq + base;
        float sum = 0.0f;
        int k = 0;
        while (k < n) { /* one run of weights sharing a scale */
            size_t g = (base + k) / gs;
            size_t end = (g + 1) * gs - base;
            int stop = end < (size_t)n ? (int)end : n;
            __m256 acc = _mm256_setzero_ps();
            for (; k + 8 <= stop; k += 8) acc = _mm256_fmadd_ps(load8_i8(row + k), _mm256_loadu_ps(x + k), acc);
            float part = hsum(acc);
            for (; k < stop; k++) part += (float)row[k] * x[k];
            sum += part * ws[g];
        }
        out[i] = sum;
    }
}

/* roundf() semantics (half away from zero) in vector form: truncate, then step away from zero when the
 * dropped fraction is >= 0.5. */
static inline __m256 round_half_away(__m256 v) {
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 sign_mask = _mm256_set1_ps(-0.0f);
    __m256 frac = _mm256_andnot_ps(sign_mask, _mm256_sub_ps(v, t));
    __m256 step = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, sign_mask));
    __m256 big = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm256_add_ps(t, _mm256_and_ps(big, step));
}

static void quantize(QVec *out, const float *x, int n, int gs) {
    if (gs % 8 != 0) {
        portable_quantize(out, x, n, gs);
        return;
    }
    __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int g = 0; g < n / gs; g++) {
        const float *xg = x + (size_t)g * gs;
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < gs; k += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(xg + k), abs_mask));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float scale = _mm_cvtss_f32(m4) / 127.0f;
        out->s[g] = scale;
        int8_t *q = out->q + (size_t)g * gs;
        if (!(scale > 0.0f)) {
            for (int k = 0; k < gs; k++) q[k] = 0;
            continue;
        }
        __m256 sv = _mm256_set1_ps(scale);
        for (int k = 0; k < gs; k += 8) {
            __m256i v = _mm256_cvttps_epi32(round_half_away(_mm256_div_ps(_mm256_loadu_ps(xg + k), sv)));
            __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            _mm_storel_epi64((__m128i *)(q + k), _mm_packs_epi16(w16, w16));
        }
    }
}

static float dot(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy(float *y, float a, const float *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

const Kernels KERNELS_AVX2 = {
    .name = "avx2",
    .matmul_f32 = matmul_f32,
    .matmul_q8 = matmul_q8,
    .matmul_q8_f32 = matmul_q8_f32,
    .matmul_q4 = avx2_matmul_q4,
    .quantize = quantize,
    .dot = dot,
    .axpy = axpy,
    .argmax = argmax,
};
#else
typedef int kernels_avx2_unused; /* ISO C forbids an empty translation unit */
#endif
