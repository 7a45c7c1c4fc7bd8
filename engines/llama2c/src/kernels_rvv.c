/* RVV 1.0 kernels (riscv64 with the V extension; __riscv_ intrinsics, clang 19). They are written for
 * any VLEN: every loop asks vsetvl how many elements it may take.
 *
 * The int8 matmul keeps one vtype (e16, m4) through its inner loop: weights are loaded as bytes and
 * sign-extended (vsext), activations come pre-widened to int16 (QVec.q16, filled by quantize), products of
 * two int8 fit in int16, and vwredsum adds a group's products into one int32. The per-group int32 sums
 * of a block of groups are then scaled and added in a vector float pass. */
#include "kernels.h"

#if defined(HAVE_KERNELS_RVV)
#include <riscv_vector.h>
#include <stddef.h>
#include <string.h>

#define GROUP_BLOCK 64 /* groups whose int32 sums are collected before the float pass */

static void matmul_f32(float *out, const float *w, const float *x, int n, int row0, int row1) {
    size_t vlmax = __riscv_vsetvlmax_e32m8();
    vfloat32m1_t zero = __riscv_vfmv_v_f_f32m1(0.0f, 1);
    for (int i = row0; i < row1; i++) {
        const float *row = w + (size_t)i * n;
        vfloat32m8_t acc = __riscv_vfmv_v_f_f32m8(0.0f, vlmax);
        for (size_t k = 0, vl; k < (size_t)n; k += vl) {
            vl = __riscv_vsetvl_e32m8((size_t)n - k);
            acc = __riscv_vfmacc_vv_f32m8_tu(acc, __riscv_vle32_v_f32m8(row + k, vl), __riscv_vle32_v_f32m8(x + k, vl),
                                             vl);
        }
        out[i] = __riscv_vfmv_f_s_f32m1_f32(__riscv_vfredusum_vs_f32m8_f32m1(acc, zero, vlmax));
    }
}

/* sum_g isum[g] * sw[g] * sx[g] over `count` groups */
static float scale_groups(const int32_t *isum, const float *sw, const float *sx, size_t count) {
    size_t vlmax = __riscv_vsetvlmax_e32m4();
    vfloat32m1_t zero = __riscv_vfmv_v_f_f32m1(0.0f, 1);
    if (count <= vlmax) { /* the usual case: one vector */
        vfloat32m4_t f = __riscv_vfcvt_f_x_v_f32m4(__riscv_vle32_v_i32m4(isum, count), count);
        f = __riscv_vfmul_vv_f32m4(f, __riscv_vle32_v_f32m4(sw, count), count);
        f = __riscv_vfmul_vv_f32m4(f, __riscv_vle32_v_f32m4(sx, count), count);
        return __riscv_vfmv_f_s_f32m1_f32(__riscv_vfredusum_vs_f32m4_f32m1(f, zero, count));
    }
    vfloat32m4_t a = __riscv_vfmv_v_f_f32m4(0.0f, vlmax);
    for (size_t g = 0, vl; g < count; g += vl) {
        vl = __riscv_vsetvl_e32m4(count - g);
        vfloat32m4_t f = __riscv_vfcvt_f_x_v_f32m4(__riscv_vle32_v_i32m4(isum + g, vl), vl);
        f = __riscv_vfmul_vv_f32m4(f, __riscv_vle32_v_f32m4(sw + g, vl), vl);
        a = __riscv_vfmacc_vv_f32m4_tu(a, f, __riscv_vle32_v_f32m4(sx + g, vl), vl);
    }
    return __riscv_vfmv_f_s_f32m1_f32(__riscv_vfredusum_vs_f32m4_f32m1(a, zero, vlmax));
}

/* The int32 dot products of `count` groups (gs <= VLMAX of e16m4) of four rows w, w+n, w+2n, w+3n with x:
 * one load of x serves four rows. */
static void group_dots4(const int8_t *w, size_t n, const int16_t *x, size_t gs, size_t count, int32_t *s0,
                        int32_t *s1, int32_t *s2, int32_t *s3) {
    vint32m1_t zero = __riscv_vmv_v_x_i32m1(0, 1);
    for (size_t g = 0; g < count; g++, w += gs, x += gs) {
        vint16m4_t xv = __riscv_vle16_v_i16m4(x, gs);
        vint16m4_t p0 = __riscv_vmul_vv_i16m4(__riscv_vsext_vf2_i16m4(__riscv_vle8_v_i8m2(w, gs), gs), xv, gs);
        vint32m1_t r0 = __riscv_vwredsum_vs_i16m4_i32m1(p0, zero, gs);
        vint16m4_t p1 = __riscv_vmul_vv_i16m4(__riscv_vsext_vf2_i16m4(__riscv_vle8_v_i8m2(w + n, gs), gs), xv, gs);
        vint32m1_t r1 = __riscv_vwredsum_vs_i16m4_i32m1(p1, zero, gs);
        vint16m4_t p2 = __riscv_vmul_vv_i16m4(__riscv_vsext_vf2_i16m4(__riscv_vle8_v_i8m2(w + 2 * n, gs), gs), xv, gs);
        vint32m1_t r2 = __riscv_vwredsum_vs_i16m4_i32m1(p2, zero, gs);
        vint16m4_t p3 = __riscv_vmul_vv_i16m4(__riscv_vsext_vf2_i16m4(__riscv_vle8_v_i8m2(w + 3 * n, gs), gs), xv, gs);
        vint32m1_t r3 = __riscv_vwredsum_vs_i16m4_i32m1(p3, zero, gs);
        s0[g] = __riscv_vmv_x_s_i32m1_i32(r0);
        s1[g] = __riscv_vmv_x_s_i32m1_i32(r1);
        s2[g] = __riscv_vmv_x_s_i32m1_i32(r2);
        s3[g] = __riscv_vmv_x_s_i32m1_i32(r3);
    }
}

static void group_dots1(const int8_t *w, const int16_t *x, size_t gs, size_t count, int32_t *s) {
    vint32m1_t zero = __riscv_vmv_v_x_i32m1(0, 1);
    for (size_t g = 0; g < count; g++, w += gs, x += gs) {
        vint16m4_t p = __riscv_vmul_vv_i16m4(__riscv_vsext_vf2_i16m4(__riscv_vle8_v_i8m2(w, gs), gs),
                                             __riscv_vle16_v_i16m4(x, gs), gs);
        s[g] = __riscv_vmv_x_s_i32m1_i32(__riscv_vwredsum_vs_i16m4_i32m1(p, zero, gs));
    }
}

static void matmul_q8(float *out, const int8_t *wq, const float *ws, const QVec *x, int n, int gs, int row0,
                      int row1) {
    if (!x->q16 || (size_t)gs > __riscv_vsetvlmax_e16m4()) {
        portable_matmul_q8(out, wq, ws, x, n, gs, row0, row1);
        return;
    }
    size_t groups = (size_t)(n / gs), sn = (size_t)n, sgs = (size_t)gs;
    int32_t s0[GROUP_BLOCK], s1[GROUP_BLOCK], s2[GROUP_BLOCK], s3[GROUP_BLOCK];
    int i = row0;
    for (; i + 4 <= row1; i += 4) {
        const int8_t *w = wq + (size_t)i * sn;
        const float *sw = ws + (size_t)i * groups;
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        for (size_t g0 = 0; g0 < groups; g0 += GROUP_BLOCK) {
            size_t count = groups - g0 < GROUP_BLOCK ? groups - g0 : GROUP_BLOCK;
            group_dots4(w + g0 * sgs, sn, x->q16 + g0 * sgs, sgs, count, s0, s1, s2, s3);
            a0 += scale_groups(s0, sw + g0, x->s + g0, count);
            a1 += scale_groups(s1, sw + groups + g0, x->s + g0, count);
            a2 += scale_groups(s2, sw + 2 * groups + g0, x->s + g0, count);
            a3 += scale_groups(s3, sw + 3 * groups + g0, x->s + g0, count);
        }
        out[i] = a0;
        out[i + 1] = a1;
        out[i + 2] = a2;
        out[i + 3] = a3;
    }
    for (; i < row1; i++) {
        const int8_t *w = wq + (size_t)i * sn;
        const float *sw = ws + (size_t)i * groups;
        float a = 0.0f;
        for (size_t g0 = 0; g0 < groups; g0 += GROUP_BLOCK) {
            size_t count = groups - g0 < GROUP_BLOCK ? groups - g0 : GROUP_BLOCK;
            group_dots1(w + g0 * sgs, x->q16 + g0 * sgs, sgs, count, s0);
            a += scale_groups(s0, sw + g0, x->s + g0, count);
        }
        out[i] = a;
    }
}

/* Groups crossing rows: x stays fp32; each run of weights that share a scale is one widened dot product. */
static void matmul_q8_f32(float *out, const int8_t *wq, const float *ws, const float *x, int n, int gs,
                          int row0, int row1) {
    vfloat32m1_t zero = __riscv_vfmv_v_f_f32m1(0.0f, 1);
    for (int i = row0; i < row1; i++) {
        size_t base = (size_t)i * n;
        const int8_t *row = wq + base;
        float sum = 0.0f;
        size_t k = 0;
        while (k < (size_t)n) {
            size_t g = (base + k) / gs;
            size_t end = (g + 1) * gs - base;
            size_t stop = end < (size_t)n ? end : (size_t)n;
            vfloat32m1_t part = zero;
            for (size_t vl; k < stop; k += vl) {
                vl = __riscv_vsetvl_e16m4(stop - k);
                vfloat32m8_t wf =
                    __riscv_vfwcvt_f_x_v_f32m8(__riscv_vsext_vf2_i16m4(__riscv_vle8_v_i8m2(row + k, vl), vl), vl);
                vfloat32m8_t p = __riscv_vfmul_vv_f32m8(wf, __riscv_vle32_v_f32m8(x + k, vl), vl);
                part = __riscv_vfredusum_vs_f32m8_f32m1(p, part, vl);
            }
            sum += __riscv_vfmv_f_s_f32m1_f32(part) * ws[g];
        }
        out[i] = sum;
    }
}

/* Per group: scale = max|x| / 127; q = x / scale rounded half away from zero (the RMM rounding mode). */
static void quantize(QVec *out, const float *x, int n, int gs) {
    vfloat32m1_t zero = __riscv_vfmv_v_f_f32m1(0.0f, 1);
    for (int g = 0; g < n / gs; g++) {
        const float *xg = x + (size_t)g * gs;
        int8_t *q = out->q + (size_t)g * gs;
        int16_t *q16 = out->q16 ? out->q16 + (size_t)g * gs : NULL;
        vfloat32m1_t m = zero;
        for (size_t k = 0, vl; k < (size_t)gs; k += vl) {
            vl = __riscv_vsetvl_e32m8((size_t)gs - k);
            m = __riscv_vfredmax_vs_f32m8_f32m1(__riscv_vfabs_v_f32m8(__riscv_vle32_v_f32m8(xg + k, vl), vl), m, vl);
        }
        float scale = __riscv_vfmv_f_s_f32m1_f32(m) / 127.0f;
        out->s[g] = scale;
        if (!(scale > 0.0f)) {
            memset(q, 0, (size_t)gs);
            if (q16) memset(q16, 0, (size_t)gs * sizeof(int16_t));
            continue;
        }
        for (size_t k = 0, vl; k < (size_t)gs; k += vl) {
            vl = __riscv_vsetvl_e32m8((size_t)gs - k);
            vfloat32m8_t v = __riscv_vfdiv_vf_f32m8(__riscv_vle32_v_f32m8(xg + k, vl), scale, vl);
            vint32m8_t i32 = __riscv_vfcvt_x_f_v_i32m8_rm(v, __RISCV_FRM_RMM, vl);
            vint16m4_t i16 = __riscv_vncvt_x_x_w_i16m4(i32, vl);
            if (q16) __riscv_vse16_v_i16m4(q16 + k, i16, vl);
            __riscv_vse8_v_i8m2(q + k, __riscv_vncvt_x_x_w_i8m2(i16, vl), vl);
        }
    }
}

static float dot(const float *a, const float *b, int n) {
    size_t vlmax = __riscv_vsetvlmax_e32m8();
    vfloat32m8_t acc = __riscv_vfmv_v_f_f32m8(0.0f, vlmax);
    for (size_t k = 0, vl; k < (size_t)n; k += vl) {
        vl = __riscv_vsetvl_e32m8((size_t)n - k);
        acc = __riscv_vfmacc_vv_f32m8_tu(acc, __riscv_vle32_v_f32m8(a + k, vl), __riscv_vle32_v_f32m8(b + k, vl), vl);
    }
    vfloat32m1_t zero = __riscv_vfmv_v_f_f32m1(0.0f, 1);
    return __riscv_vfmv_f_s_f32m1_f32(__riscv_vfredusum_vs_f32m8_f32m1(acc, zero, vlmax));
}

static void axpy(float *y, float a, const float *x, int n) {
    for (size_t k = 0, vl; k < (size_t)n; k += vl) {
        vl = __riscv_vsetvl_e32m8((size_t)n - k);
        vfloat32m8_t v = __riscv_vfmacc_vf_f32m8(__riscv_vle32_v_f32m8(y + k, vl), a, __riscv_vle32_v_f32m8(x + k, vl), vl);
        __riscv_vse32_v_f32m8(y + k, v, vl);
    }
}

/* The first index of the largest value: one pass for the maximum, one to find where it first occurs. */
static int argmax(const float *x, int n) {
    vfloat32m1_t m = __riscv_vfmv_v_f_f32m1(x[0], 1);
    for (size_t k = 0, vl; k < (size_t)n; k += vl) {
        vl = __riscv_vsetvl_e32m8((size_t)n - k);
        m = __riscv_vfredmax_vs_f32m8_f32m1(__riscv_vle32_v_f32m8(x + k, vl), m, vl);
    }
    float best = __riscv_vfmv_f_s_f32m1_f32(m);
    for (size_t k = 0, vl; k < (size_t)n; k += vl) {
        vl = __riscv_vsetvl_e32m8((size_t)n - k);
        long at = __riscv_vfirst_m_b4(__riscv_vmfeq_vf_f32m8_b4(__riscv_vle32_v_f32m8(x + k, vl), best, vl), vl);
        if (at >= 0) return (int)(k + (size_t)at);
    }
    return 0;
}

const Kernels KERNELS_RVV = {
    .name = "rvv",
    .matmul_f32 = matmul_f32,
    .matmul_q8 = matmul_q8,
    .matmul_q8_f32 = matmul_q8_f32,
    .quantize = quantize,
    .dot = dot,
    .axpy = axpy,
    .argmax = argmax,
};
#else
typedef int kernels_rvv_unused; /* ISO C forbids an empty translation unit */
#endif
