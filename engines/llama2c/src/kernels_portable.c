/* Plain C kernels: the reference semantics, and the only ones in `make portable` / `make riscv-scalar`. */
#include <math.h>
#include <stddef.h>

#include "kernels.h"

static void matmul_f32(float *out, const float *w, const float *x, int n, int row0, int row1) {
    for (int i = row0; i < row1; i++) {
        const float *row = w + (size_t)i * n;
        float sum = 0.0f;
        for (int k = 0; k < n; k++) sum += row[k] * x[k];
        out[i] = sum;
    }
}

/* The int8 matmul for a group size sgs, inlined once per common size so that the compiler knows the trip
 * count of the inner loop and unrolls it whole (5% fewer instructions on rv64gc than the generic copy).
 * Rows go in fours that share each load of x (about 3.4 instead of 4 instructions a weight there). */
static inline __attribute__((always_inline)) void q8_rows(float *out, const int8_t *wq, const float *ws,
                                                          const QVec *x, int n, size_t sgs, int row0, int row1) {
    size_t groups = (size_t)n / sgs;
    const int8_t *xq = x->q;
    const float *xs = x->s;
    int i = row0;
    for (; i + 4 <= row1; i += 4) { /* four rows share each load of x */
        const int8_t *p0 = wq + (size_t)i * n, *p1 = p0 + n, *p2 = p1 + n, *p3 = p2 + n, *pb = xq;
        const float *sc = ws + (size_t)i * groups;
        float sum0 = 0.0f, sum1 = 0.0f, sum2 = 0.0f, sum3 = 0.0f;
        for (size_t g = 0; g < groups; g++) {
            int32_t acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
#pragma GCC unroll 8 /* 16 spills on rv64gc */
            for (const int8_t *end = pb + sgs; pb < end; p0++, p1++, p2++, p3++, pb++) {
                int32_t xv = *pb;
                acc0 += (int32_t)*p0 * xv;
                acc1 += (int32_t)*p1 * xv;
                acc2 += (int32_t)*p2 * xv;
                acc3 += (int32_t)*p3 * xv;
            }
            sum0 += (float)acc0 * sc[g] * xs[g];
            sum1 += (float)acc1 * sc[groups + g] * xs[g];
            sum2 += (float)acc2 * sc[2 * groups + g] * xs[g];
            sum3 += (float)acc3 * sc[3 * groups + g] * xs[g];
        }
        out[i] = sum0;
        out[i + 1] = sum1;
        out[i + 2] = sum2;
        out[i + 3] = sum3;
    }
    for (; i < row1; i++) {
        const int8_t *row = wq + (size_t)i * n;
        const float *scales = ws + (size_t)i * groups;
        float sum = 0.0f;
        for (size_t g = 0; g < groups; g++) {
            /* pointers and a size_t counter: with `row[k]` for an int k GCC recomputes two addresses and
             * sign-extends k on every weight (9 instructions a weight on rv64gc, about 4.4 now) */
            const int8_t *a = row + g * sgs, *b = xq + g * sgs;
            int32_t acc = 0;
            for (size_t k = 0; k < sgs; k++) acc += (int32_t)a[k] * b[k];
            sum += (float)acc * scales[g] * xs[g];
        }
        out[i] = sum;
    }
}

void portable_matmul_q8(float *out, const int8_t *wq, const float *ws, const QVec *x, int n, int gs, int row0,
                        int row1) {
    if (gs == 32) q8_rows(out, wq, ws, x, n, 32, row0, row1);
    else if (gs == 64) q8_rows(out, wq, ws, x, n, 64, row0, row1);
    else q8_rows(out, wq, ws, x, n, (size_t)gs, row0, row1);
}

void portable_matmul_q8_f32(float *out, const int8_t *wq, const float *ws, const float *x, int n, int gs,
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
            float part = 0.0f;
            for (; k < stop; k++) part += (float)row[k] * x[k];
            sum += part * ws[g];
        }
        out[i] = sum;
    }
}

void portable_quantize(QVec *out, const float *x, int n, int gs) {
    for (int g = 0; g < n / gs; g++) {
        const float *xg = x + (size_t)g * gs;
        float wmax = 0.0f;
        for (int k = 0; k < gs; k++) wmax = fmaxf(wmax, fabsf(xg[k]));
        float scale = wmax / 127.0f;
        out->s[g] = scale;
        for (int k = 0; k < gs; k++) {
            int8_t q = scale > 0.0f ? (int8_t)roundf(xg[k] / scale) : 0;
            out->q[(size_t)g * gs + k] = q;
            if (out->q16) out->q16[(size_t)g * gs + k] = q;
        }
    }
}

static float dot(const float *a, const float *b, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static void axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

const Kernels KERNELS_PORTABLE = {
    .name = "portable",
    .matmul_f32 = matmul_f32,
    .matmul_q8 = portable_matmul_q8,
    .matmul_q8_f32 = portable_matmul_q8_f32,
    .matmul_q4 = portable_matmul_q4,
    .quantize = portable_quantize,
    .dot = dot,
    .axpy = axpy,
    .argmax = argmax,
};

const Kernels *select_kernels(int portable) {
    if (portable) return &KERNELS_PORTABLE;
#if defined(HAVE_KERNELS_AVX2)
    return &KERNELS_AVX2;
#elif defined(HAVE_KERNELS_RVV)
    return &KERNELS_RVV;
#else
    return &KERNELS_PORTABLE;
#endif
}
