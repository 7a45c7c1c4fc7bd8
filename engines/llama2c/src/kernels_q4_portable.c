/* The 4-bit matmul in plain C: the reference semantics, and what `make portable` / `make riscv-scalar` run.
 * Per group of 32: d * sx * (sum nibble * qx) + m * (sx * sum qx), the integer sum exact in int32. */
#include <stddef.h>

#include "kernels_q4.h"

/* The 32 products of one group: byte j holds value j (low nibble) and value j + 16 (high nibble). */
static inline int32_t q4_group_dot(const uint8_t *w, const int8_t *x) {
    int32_t acc = 0;
#pragma GCC unroll 16
    for (int j = 0; j < Q4_GROUP / 2; j++) acc += (int32_t)(w[j] & 15) * x[j] + (int32_t)(w[j] >> 4) * x[j + 16];
    return acc;
}

void portable_matmul_q4(float *out, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, const QVec *x, int n,
                        int row0, int row1) {
    float xsum[Q4_MAX_GROUPS];
    q4_group_sums(xsum, x, n);
    size_t groups = (size_t)n / Q4_GROUP, row_bytes = (size_t)n / 2;
    int i = row0;
    for (; i + 2 <= row1; i += 2) { /* two rows share each load of x (four spill on rv64gc) */
        const uint8_t *w0 = wq + (size_t)i * row_bytes, *w1 = w0 + row_bytes;
        const uint16_t *d0 = wd + (size_t)i * groups, *m0 = wm + (size_t)i * groups;
        float sum0 = 0.0f, sum1 = 0.0f;
        for (size_t g = 0; g < groups; g++) {
            const int8_t *xg = x->q + g * Q4_GROUP;
            const uint8_t *a = w0 + g * (Q4_GROUP / 2), *b = w1 + g * (Q4_GROUP / 2);
            int32_t acc0 = 0, acc1 = 0;
#pragma GCC unroll 16
            for (int j = 0; j < Q4_GROUP / 2; j++) {
                int32_t lo = xg[j], hi = xg[j + 16];
                acc0 += (int32_t)(a[j] & 15) * lo + (int32_t)(a[j] >> 4) * hi;
                acc1 += (int32_t)(b[j] & 15) * lo + (int32_t)(b[j] >> 4) * hi;
            }
            float sx = x->s[g];
            sum0 += (float)acc0 * (q4_half(d0[g]) * sx) + q4_half(m0[g]) * xsum[g];
            sum1 += (float)acc1 * (q4_half(d0[groups + g]) * sx) + q4_half(m0[groups + g]) * xsum[g];
        }
        out[i] = sum0;
        out[i + 1] = sum1;
    }
    for (; i < row1; i++) {
        const uint8_t *w = wq + (size_t)i * row_bytes;
        const uint16_t *d = wd + (size_t)i * groups, *m = wm + (size_t)i * groups;
        float sum = 0.0f;
        for (size_t g = 0; g < groups; g++) {
            int32_t acc = q4_group_dot(w + g * (Q4_GROUP / 2), x->q + g * Q4_GROUP);
            sum += (float)acc * (q4_half(d[g]) * x->s[g]) + q4_half(m[g]) * xsum[g];
        }
        out[i] = sum;
    }
}
