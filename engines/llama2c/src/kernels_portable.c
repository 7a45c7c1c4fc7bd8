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

void portable_matmul_q8(float *out, const int8_t *wq, const float *ws, const QVec *x, int n, int gs, int row0,
                        int row1) {
    int groups = n / gs;
    for (int i = row0; i < row1; i++) {
        const int8_t *row = wq + (size_t)i * n;
        const float *scales = ws + (size_t)i * groups;
        float sum = 0.0f;
        for (int g = 0; g < groups; g++) {
            int32_t acc = 0;
            for (int k = g * gs; k < (g + 1) * gs; k++) acc += (int32_t)row[k] * (int32_t)x->q[k];
            sum += (float)acc * scales[g] * x->s[g];
        }
        out[i] = sum;
    }
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
