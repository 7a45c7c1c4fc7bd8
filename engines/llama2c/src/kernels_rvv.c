/* Vector kernels for riscv64, one source for two instruction sets:
 *   - RVV 1.0 (the V extension; clang 19, `make riscv-rvv`), and
 *   - XTheadVector, T-Head's RVV 0.7.1 of the C906/C910 (GCC 14, `make riscv-thead`).
 * GCC 14 accepts the RVV 1.0 intrinsic names under -march=..._xtheadvector and emits th.v* instructions, so
 * the few differences live in the macro layer below, and the RVV 1.0 tests under QEMU test the logic of the
 * XTheadVector build too. What the code avoids because RVV 0.7.1 lacks it or GCC 14.2 gets it wrong there:
 *   - vsext (0.7.1 has none): int8 weights are loaded sign-extended to int16 by th.vlb.v instead;
 *   - the tail-undisturbed policy (0.7.1 has no policies): no loop keeps an accumulator alive across a
 *     shorter last strip; every strip is reduced into a scalar (element 0) instead, which is the same under
 *     any tail policy (the tests run QEMU with tail and mask elements set to all ones to prove it);
 *   - constant vector lengths and vmv.x.s after a change of SEW: GCC 14.2 emits vsetivli (absent in 0.7.1)
 *     or fails with an internal error for them, so vl = 1 goes through a register and int32 sums leave a
 *     vector by a one-element store (vfmv.f.s, always at SEW 32 here, is fine; a wrong vsetvl would fail
 *     the XTheadVector build at the assembler, not silently).
 * Every loop asks vsetvl how many elements it may take, so the code is correct for any VLEN.
 *
 * The int8 matmul keeps one vtype (e16, m4 or m8) through its inner loop: weights are loaded as bytes
 * widened to int16, activations come pre-widened (QVec.q16, filled by quantize), products of two int8 fit
 * in int16, and vwredsum adds a group's products into one int32. The per-group int32 sums of a block of groups are
 * then scaled and added in a vector float pass. */
#include "kernels.h"

#if defined(HAVE_KERNELS_RVV)
#include <stddef.h>

#if defined(__riscv_xtheadvector)
#include <riscv_th_vector.h>
#define RVV_KERNELS_NAME "xtheadvector"
/* th.vlb.v: signed bytes into SEW=16 elements (GCC types the pointer as the element type) */
#define load_i8_as_i16m4(p, vl) __riscv_th_vlb_v_i16m4((const int16_t *)(const void *)(p), (vl))
#define load_i8_as_i16m8(p, vl) __riscv_th_vlb_v_i16m8((const int16_t *)(const void *)(p), (vl))
/* vl = 1 from a register: an immediate one becomes a vsetivli that RVV 0.7.1 does not have */
static inline size_t vl_one(void) {
    size_t one = 1;
    __asm__("" : "+r"(one));
    return one;
}
#else
#include <riscv_vector.h>
#define RVV_KERNELS_NAME "rvv"
#define load_i8_as_i16m4(p, vl) __riscv_vsext_vf2_i16m4(__riscv_vle8_v_i8m2((p), (vl)), (vl))
#define load_i8_as_i16m8(p, vl) __riscv_vsext_vf2_i16m8(__riscv_vle8_v_i8m4((p), (vl)), (vl))
static inline size_t vl_one(void) { return 1; }
#endif

#define GROUP_BLOCK 64 /* groups whose int32 sums are collected before the float pass */

static inline float first_f32(vfloat32m1_t v) { return __riscv_vfmv_f_s_f32m1_f32(v); }

static inline vfloat32m1_t zero_f32m1(void) { return __riscv_vfmv_v_f_f32m1(0.0f, __riscv_vsetvlmax_e32m1()); }
static inline vint32m1_t zero_i32m1(void) { return __riscv_vmv_v_x_i32m1(0, __riscv_vsetvlmax_e32m1()); }

/* sum_k a[k] * b[k]: whole vectors accumulate lane-wise, the last partial strip is reduced on its own. */
static float dot(const float *a, const float *b, int n) {
    size_t vlmax = __riscv_vsetvlmax_e32m8(), sn = (size_t)n, full = sn - sn % vlmax;
    vfloat32m1_t sum = zero_f32m1();
    if (full) {
        vfloat32m8_t acc = __riscv_vfmul_vv_f32m8(__riscv_vle32_v_f32m8(a, vlmax), __riscv_vle32_v_f32m8(b, vlmax),
                                                  vlmax);
        for (size_t k = vlmax; k < full; k += vlmax)
            acc = __riscv_vfmacc_vv_f32m8(acc, __riscv_vle32_v_f32m8(a + k, vlmax), __riscv_vle32_v_f32m8(b + k, vlmax),
                                          vlmax);
        sum = __riscv_vfredusum_vs_f32m8_f32m1(acc, sum, vlmax);
    }
    if (full < sn) {
        size_t vl = __riscv_vsetvl_e32m8(sn - full);
        vfloat32m8_t p = __riscv_vfmul_vv_f32m8(__riscv_vle32_v_f32m8(a + full, vl),
                                                __riscv_vle32_v_f32m8(b + full, vl), vl);
        sum = __riscv_vfredusum_vs_f32m8_f32m1(p, sum, vl);
    }
    return first_f32(sum);
}

static void matmul_f32(float *out, const float *w, const float *x, int n, int row0, int row1) {
    for (int i = row0; i < row1; i++) out[i] = dot(w + (size_t)i * n, x, n);
}

/* sum_g isum[g] * sw[g] * sx[g] over `count` groups */
static float scale_groups(const int32_t *isum, const float *sw, const float *sx, size_t count) {
    vfloat32m1_t sum = zero_f32m1();
    if (count <= __riscv_vsetvlmax_e32m4()) { /* the usual case: one vector */
        vfloat32m4_t f = __riscv_vfcvt_f_x_v_f32m4(__riscv_vle32_v_i32m4(isum, count), count);
        f = __riscv_vfmul_vv_f32m4(f, __riscv_vle32_v_f32m4(sw, count), count);
        f = __riscv_vfmul_vv_f32m4(f, __riscv_vle32_v_f32m4(sx, count), count);
        return first_f32(__riscv_vfredusum_vs_f32m4_f32m1(f, sum, count));
    }
    for (size_t g = 0, vl; g < count; g += vl) {
        vl = __riscv_vsetvl_e32m4(count - g);
        vfloat32m4_t f = __riscv_vfcvt_f_x_v_f32m4(__riscv_vle32_v_i32m4(isum + g, vl), vl);
        f = __riscv_vfmul_vv_f32m4(f, __riscv_vle32_v_f32m4(sw + g, vl), vl);
        f = __riscv_vfmul_vv_f32m4(f, __riscv_vle32_v_f32m4(sx + g, vl), vl);
        sum = __riscv_vfredusum_vs_f32m4_f32m1(f, sum, vl);
    }
    return first_f32(sum);
}

/* The int32 dot products of `count` groups of four rows w, w+n, w+2n, w+3n with x: one load of x serves
 * four rows, one vwredsum per row and group. Defined for LMUL 4 (a group of up to VLEN/4 weights: 32 at
 * VLEN 128, stories15M's) and LMUL 8 (up to VLEN/2: the group size 64 of stories42M and larger on the
 * C906's VLEN 128). */
#define DEFINE_GROUP_DOTS4(M)                                                                                   \
    static void group_dots4_##M(const int8_t *w, size_t n, const int16_t *x, size_t gs, size_t count, int32_t *s0, \
                                int32_t *s1, int32_t *s2, int32_t *s3) {                                       \
        vint32m1_t zero = zero_i32m1();                                                                        \
        size_t one = vl_one();                                                                                 \
        for (size_t g = 0; g < count; g++, w += gs, x += gs) {                                                 \
            vint16##M##_t xv = __riscv_vle16_v_i16##M(x, gs);                                                  \
            vint16##M##_t p0 = __riscv_vmul_vv_i16##M(load_i8_as_i16##M(w, gs), xv, gs);                        \
            vint32m1_t r0 = __riscv_vwredsum_vs_i16##M##_i32m1(p0, zero, gs);                                  \
            vint16##M##_t p1 = __riscv_vmul_vv_i16##M(load_i8_as_i16##M(w + n, gs), xv, gs);                    \
            vint32m1_t r1 = __riscv_vwredsum_vs_i16##M##_i32m1(p1, zero, gs);                                  \
            vint16##M##_t p2 = __riscv_vmul_vv_i16##M(load_i8_as_i16##M(w + 2 * n, gs), xv, gs);                \
            vint32m1_t r2 = __riscv_vwredsum_vs_i16##M##_i32m1(p2, zero, gs);                                  \
            vint16##M##_t p3 = __riscv_vmul_vv_i16##M(load_i8_as_i16##M(w + 3 * n, gs), xv, gs);                \
            vint32m1_t r3 = __riscv_vwredsum_vs_i16##M##_i32m1(p3, zero, gs);                                  \
            __riscv_vse32_v_i32m1(s0 + g, r0, one);                                                            \
            __riscv_vse32_v_i32m1(s1 + g, r1, one);                                                            \
            __riscv_vse32_v_i32m1(s2 + g, r2, one);                                                            \
            __riscv_vse32_v_i32m1(s3 + g, r3, one);                                                            \
        }                                                                                                      \
    }
DEFINE_GROUP_DOTS4(m4)
DEFINE_GROUP_DOTS4(m8)

/* One row; a group wider than one e16m8 vector is taken in strips, each reduced into the group's sum. */
static void group_dots1(const int8_t *w, const int16_t *x, size_t gs, size_t count, int32_t *s) {
    vint32m1_t zero = zero_i32m1();
    size_t one = vl_one();
    for (size_t g = 0; g < count; g++, w += gs, x += gs) {
        vint32m1_t r = zero;
        for (size_t k = 0, vl; k < gs; k += vl) {
            vl = __riscv_vsetvl_e16m4(gs - k);
            vint16m4_t p = __riscv_vmul_vv_i16m4(load_i8_as_i16m4(w + k, vl), __riscv_vle16_v_i16m4(x + k, vl), vl);
            r = __riscv_vwredsum_vs_i16m4_i32m1(p, r, vl);
        }
        __riscv_vse32_v_i32m1(s + g, r, one);
    }
}

/* Rows [row0, row1) in blocks of four with group_dots4 for LMUL 4 or 8 (a constant once inlined); returns
 * the first row it left for the one-row loop. */
static inline __attribute__((always_inline)) int q8_rows4(float *out, const int8_t *wq, const float *ws,
                                                          const QVec *x, size_t sn, size_t sgs, int row0, int row1,
                                                          int lmul8) {
    size_t groups = sn / sgs;
    int32_t s0[GROUP_BLOCK], s1[GROUP_BLOCK], s2[GROUP_BLOCK], s3[GROUP_BLOCK];
    int i = row0;
    for (; i + 4 <= row1; i += 4) {
        const int8_t *w = wq + (size_t)i * sn;
        const float *sw = ws + (size_t)i * groups;
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        for (size_t g0 = 0; g0 < groups; g0 += GROUP_BLOCK) {
            size_t count = groups - g0 < GROUP_BLOCK ? groups - g0 : GROUP_BLOCK;
            if (lmul8) group_dots4_m8(w + g0 * sgs, sn, x->q16 + g0 * sgs, sgs, count, s0, s1, s2, s3);
            else group_dots4_m4(w + g0 * sgs, sn, x->q16 + g0 * sgs, sgs, count, s0, s1, s2, s3);
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
    return i;
}

static void matmul_q8(float *out, const int8_t *wq, const float *ws, const QVec *x, int n, int gs, int row0,
                      int row1) {
    if (!x->q16) {
        portable_matmul_q8(out, wq, ws, x, n, gs, row0, row1);
        return;
    }
    size_t groups = (size_t)(n / gs), sn = (size_t)n, sgs = (size_t)gs;
    /* the smallest LMUL a group fits in; wider groups go through group_dots1's strips, one row at a time */
    int i = row0;
    if (sgs <= __riscv_vsetvlmax_e16m4()) i = q8_rows4(out, wq, ws, x, sn, sgs, row0, row1, 0);
    else if (sgs <= __riscv_vsetvlmax_e16m8()) i = q8_rows4(out, wq, ws, x, sn, sgs, row0, row1, 1);
    int32_t s0[GROUP_BLOCK];
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
    vfloat32m1_t zero = zero_f32m1();
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
                vfloat32m8_t wf = __riscv_vfwcvt_f_x_v_f32m8(load_i8_as_i16m4(row + k, vl), vl);
                vfloat32m8_t p = __riscv_vfmul_vv_f32m8(wf, __riscv_vle32_v_f32m8(x + k, vl), vl);
                part = __riscv_vfredusum_vs_f32m8_f32m1(p, part, vl);
            }
            sum += first_f32(part) * ws[g];
        }
        out[i] = sum;
    }
}

/* Per group: scale = max|x| / 127; q = x / scale rounded half away from zero (the RMM rounding mode). */
static void quantize(QVec *out, const float *x, int n, int gs) {
    vfloat32m1_t zero = zero_f32m1();
    for (int g = 0; g < n / gs; g++) {
        const float *xg = x + (size_t)g * gs;
        int8_t *q = out->q + (size_t)g * gs;
        int16_t *q16 = out->q16 ? out->q16 + (size_t)g * gs : NULL;
        vfloat32m1_t m = zero;
        for (size_t k = 0, vl; k < (size_t)gs; k += vl) {
            vl = __riscv_vsetvl_e32m8((size_t)gs - k);
            m = __riscv_vfredmax_vs_f32m8_f32m1(__riscv_vfabs_v_f32m8(__riscv_vle32_v_f32m8(xg + k, vl), vl), m, vl);
        }
        float scale = first_f32(m) / 127.0f;
        out->s[g] = scale;
        /* An all-zero group (scale 0) divides by 1 and so gives zeros, with no call (memset) in this loop:
         * vector registers do not survive calls, and a spill would read vlenb, absent on some C906s. */
        float divisor = scale > 0.0f ? scale : 1.0f;
        for (size_t k = 0, vl; k < (size_t)gs; k += vl) {
            vl = __riscv_vsetvl_e32m8((size_t)gs - k);
            vfloat32m8_t v = __riscv_vfdiv_vf_f32m8(__riscv_vle32_v_f32m8(xg + k, vl), divisor, vl);
            vint32m8_t i32 = __riscv_vfcvt_x_f_v_i32m8_rm(v, __RISCV_FRM_RMM, vl);
            vint16m4_t i16 = __riscv_vncvt_x_x_w_i16m4(i32, vl);
            if (q16) __riscv_vse16_v_i16m4(q16 + k, i16, vl);
            __riscv_vse8_v_i8m2(q + k, __riscv_vncvt_x_x_w_i8m2(i16, vl), vl);
        }
    }
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
    vfloat32m1_t m = __riscv_vfmv_v_f_f32m1(x[0], __riscv_vsetvlmax_e32m1());
    for (size_t k = 0, vl; k < (size_t)n; k += vl) {
        vl = __riscv_vsetvl_e32m8((size_t)n - k);
        m = __riscv_vfredmax_vs_f32m8_f32m1(__riscv_vle32_v_f32m8(x + k, vl), m, vl);
    }
    float best = first_f32(m);
    for (size_t k = 0, vl; k < (size_t)n; k += vl) {
        vl = __riscv_vsetvl_e32m8((size_t)n - k);
        long at = __riscv_vfirst_m_b4(__riscv_vmfeq_vf_f32m8_b4(__riscv_vle32_v_f32m8(x + k, vl), best, vl), vl);
        if (at >= 0) return (int)(k + (size_t)at);
    }
    return 0;
}

const Kernels KERNELS_RVV = {
    .name = RVV_KERNELS_NAME,
    .matmul_f32 = matmul_f32,
    .matmul_q8 = matmul_q8,
    .matmul_q8_f32 = matmul_q8_f32,
    .matmul_q4 = rvv_matmul_q4,
    .quantize = quantize,
    .dot = dot,
    .axpy = axpy,
    .argmax = argmax,
};
#else
typedef int kernels_rvv_unused; /* ISO C forbids an empty translation unit */
#endif
