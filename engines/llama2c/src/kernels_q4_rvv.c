/* The 4-bit matmul for riscv64 vectors, one source for RVV 1.0 (clang 19) and XTheadVector (GCC 14), under the
 * rules of kernels_rvv.c (no vzext or vsext on 0.7.1: th.vlbu.v / th.vlhu.v load zero-extended instead; no
 * accumulator kept across a shorter strip; vector lengths from a register, never an immediate).
 *
 * A group's 16 bytes are loaded widened to 16 bits, split into its low nibbles (values 0..15) and high nibbles
 * (values 16..31), multiplied with the int16 activations (QVec.q16) and summed in one int16 vector (two
 * products of at most 15 * 127 each per element fit) that one vwredsum adds into the group's int32. A vector
 * float pass then applies each group's d and m, converted from fp16 by integer operations (the C906 has no
 * fp16 vector conversion that RVV 1.0 shares). Four rows share each load of x. */
#include "kernels_q4.h"

#if defined(HAVE_KERNELS_RVV)
#include <stddef.h>

#if defined(__riscv_xtheadvector)
#include <riscv_th_vector.h>
#define load_u8_as_u16m2(p, vl) __riscv_th_vlbu_v_u16m2((const uint16_t *)(const void *)(p), (vl))
#define load_u16_as_u32m4(p, vl) __riscv_th_vlhu_v_u32m4((const uint32_t *)(const void *)(p), (vl))
/* a vector length through a register: an immediate one becomes a vsetivli that RVV 0.7.1 does not have */
static inline size_t opaque(size_t v) {
    __asm__("" : "+r"(v));
    return v;
}
#else
#include <riscv_vector.h>
#define load_u8_as_u16m2(p, vl) __riscv_vzext_vf2_u16m2(__riscv_vle8_v_u8m1((p), (vl)), (vl))
#define load_u16_as_u32m4(p, vl) __riscv_vzext_vf2_u32m4(__riscv_vle16_v_u16m2((p), (vl)), (vl))
static inline size_t opaque(size_t v) { return v; }
#endif

#define Q4_BLOCK 64 /* groups whose int32 sums are collected before the float pass */
#define HALF (Q4_GROUP / 2)

/* One group of one row: sum over j < 16 of lo_j * x_j + hi_j * x_(j+16), as element 0 of an int32 vector. */
static inline vint32m1_t group_dot(const uint8_t *w, vint16m2_t xlo, vint16m2_t xhi, vint32m1_t zero, size_t vl) {
    vuint16m2_t v = load_u8_as_u16m2(w, vl);
    vint16m2_t lo = __riscv_vreinterpret_v_u16m2_i16m2(__riscv_vand_vx_u16m2(v, 15, vl));
    vint16m2_t hi = __riscv_vreinterpret_v_u16m2_i16m2(__riscv_vsrl_vx_u16m2(v, 4, vl));
    vint16m2_t p = __riscv_vmul_vv_i16m2(lo, xlo, vl);
    p = __riscv_vmacc_vv_i16m2(p, hi, xhi, vl);
    return __riscv_vwredsum_vs_i16m2_i32m1(p, zero, vl);
}

/* The int32 sums of `count` groups of the rows w + r * row_bytes, r < rows (1 or 4, a constant once inlined). */
static inline __attribute__((always_inline)) void group_dots(const uint8_t *w, size_t row_bytes, const int16_t *x,
                                                             size_t count, int rows, int32_t *const *s) {
    size_t vl = opaque(HALF), one = opaque(1);
    vint32m1_t zero = __riscv_vmv_v_x_i32m1(0, __riscv_vsetvlmax_e32m1());
    for (size_t g = 0; g < count; g++, w += HALF, x += Q4_GROUP) {
        vint16m2_t xlo = __riscv_vle16_v_i16m2(x, vl), xhi = __riscv_vle16_v_i16m2(x + HALF, vl);
        if (rows == 1) {
            __riscv_vse32_v_i32m1(s[0] + g, group_dot(w, xlo, xhi, zero, vl), one);
            continue;
        }
        /* the four rows' sums first, then the stores: one change of SEW per group rather than two per row */
        vint32m1_t r0 = group_dot(w, xlo, xhi, zero, vl), r1 = group_dot(w + row_bytes, xlo, xhi, zero, vl);
        vint32m1_t r2 = group_dot(w + 2 * row_bytes, xlo, xhi, zero, vl);
        vint32m1_t r3 = group_dot(w + 3 * row_bytes, xlo, xhi, zero, vl);
        __riscv_vse32_v_i32m1(s[0] + g, r0, one);
        __riscv_vse32_v_i32m1(s[1] + g, r1, one);
        __riscv_vse32_v_i32m1(s[2] + g, r2, one);
        __riscv_vse32_v_i32m1(s[3] + g, r3, one);
    }
}

/* fp16 bits -> float, as q4_half() does it, for vl elements */
static inline vfloat32m4_t halves(const uint16_t *h, size_t vl) {
    vuint32m4_t u = load_u16_as_u32m4(h, vl);
    vuint32m4_t mag = __riscv_vsll_vx_u32m4(__riscv_vand_vx_u32m4(u, 0x7fffu, vl), 13, vl);
    vuint32m4_t sign = __riscv_vsll_vx_u32m4(__riscv_vand_vx_u32m4(u, 0x8000u, vl), 16, vl);
    vfloat32m4_t f = __riscv_vfmul_vf_f32m4(__riscv_vreinterpret_v_u32m4_f32m4(mag), 0x1p112f, vl);
    return __riscv_vreinterpret_v_u32m4_f32m4(__riscv_vor_vv_u32m4(__riscv_vreinterpret_v_f32m4_u32m4(f), sign, vl));
}

/* sum_g isum[g] * d[g] * sx[g] + m[g] * xsum[g] over `count` groups */
static float scale_groups(const int32_t *isum, const uint16_t *d, const uint16_t *m, const float *sx,
                          const float *xsum, size_t count) {
    vfloat32m1_t acc = __riscv_vfmv_v_f_f32m1(0.0f, __riscv_vsetvlmax_e32m1());
    for (size_t g = 0, vl; g < count; g += vl) {
        vl = __riscv_vsetvl_e32m4(count - g);
        vfloat32m4_t scale = __riscv_vfmul_vv_f32m4(halves(d + g, vl), __riscv_vle32_v_f32m4(sx + g, vl), vl);
        vfloat32m4_t f = __riscv_vfmul_vv_f32m4(__riscv_vfcvt_f_x_v_f32m4(__riscv_vle32_v_i32m4(isum + g, vl), vl),
                                                scale, vl);
        f = __riscv_vfmacc_vv_f32m4(f, halves(m + g, vl), __riscv_vle32_v_f32m4(xsum + g, vl), vl);
        acc = __riscv_vfredusum_vs_f32m4_f32m1(f, acc, vl);
    }
    return __riscv_vfmv_f_s_f32m1_f32(acc);
}

void rvv_matmul_q4(float *out, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, const QVec *x, int n,
                   int row0, int row1) {
    if (!x->q16 || __riscv_vsetvlmax_e16m2() < HALF) { /* a half group must fit one e16m2 vector */
        portable_matmul_q4(out, wq, wd, wm, x, n, row0, row1);
        return;
    }
    float xsum[Q4_MAX_GROUPS];
    q4_group_sums(xsum, x, n);
    size_t groups = (size_t)n / Q4_GROUP, row_bytes = (size_t)n / 2;
    int32_t s0[Q4_BLOCK], s1[Q4_BLOCK], s2[Q4_BLOCK], s3[Q4_BLOCK];
    int32_t *const sums[4] = {s0, s1, s2, s3};
    int i = row0;
    for (; i < row1;) {
        int rows = i + 4 <= row1 ? 4 : 1;
        const uint8_t *w = wq + (size_t)i * row_bytes;
        float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (size_t g0 = 0; g0 < groups; g0 += Q4_BLOCK) {
            size_t count = groups - g0 < Q4_BLOCK ? groups - g0 : Q4_BLOCK;
            if (rows == 4) group_dots(w + g0 * HALF, row_bytes, x->q16 + g0 * Q4_GROUP, count, 4, sums);
            else group_dots(w + g0 * HALF, row_bytes, x->q16 + g0 * Q4_GROUP, count, 1, sums);
            for (int r = 0; r < rows; r++) {
                size_t at = (size_t)(i + r) * groups + g0;
                a[r] += scale_groups(sums[r], wd + at, wm + at, x->s + g0, xsum + g0, count);
            }
        }
        for (int r = 0; r < rows; r++) out[i + r] = a[r];
        i += rows;
    }
}
#else
typedef int kernels_q4_rvv_unused; /* ISO C forbids an empty translation unit */
#endif
