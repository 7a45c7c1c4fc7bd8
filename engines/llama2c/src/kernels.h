/* The hot loops, in one table per instruction set: portable C, AVX2 (x86-64) and RVV 1.0 (riscv64).
 * Matmuls compute rows [row0, row1) of out = W x for W (d, n), so a thread pool can split them. */
#ifndef STORYBOT_KERNELS_H
#define STORYBOT_KERNELS_H

#include <stdint.h>

/* An activation vector quantized in groups of gs like the weights: value = q[i] * s[i / gs]. */
typedef struct {
    int8_t *q;    /* (n,) */
    int16_t *q16; /* (n,) the same values widened to 16 bits, for kernels that want them (RVV); may be NULL */
    float *s;     /* (n / gs,) */
} QVec;

typedef struct {
    const char *name;
    /* fp32: out[i] = sum_k w[i*n + k] * x[k] */
    void (*matmul_f32)(float *out, const float *w, const float *x, int n, int row0, int row1);
    /* int8, n % gs == 0: out[i] = sum_g (sum_k qw * qx) * sw[g] * sx[g] */
    void (*matmul_q8)(float *out, const int8_t *wq, const float *ws, const QVec *x, int n, int gs, int row0,
                      int row1);
    /* int8 with groups that cross rows (n % gs != 0): x stays fp32, out[i] = sum_k qw * sw[(i*n+k)/gs] * x[k] */
    void (*matmul_q8_f32)(float *out, const int8_t *wq, const float *ws, const float *x, int n, int gs,
                          int row0, int row1);
    /* 4-bit groups of 32 (v3 weight_type 2; kernels_q4_*.c), n % 32 == 0, x quantized in groups of 32:
     * out[i] = sum_g d[g] * sx[g] * (sum_k nibble * qx) + m[g] * sx[g] * (sum_k qx), d and m fp16 */
    void (*matmul_q4)(float *out, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, const QVec *x, int n,
                      int row0, int row1);
    /* x (n,) -> q: per group scale = max|x| / 127 (0 stays 0), q = round half away from zero (x / scale) */
    void (*quantize)(QVec *out, const float *x, int n, int gs);
    float (*dot)(const float *a, const float *b, int n);
    void (*axpy)(float *y, float a, const float *x, int n); /* y += a * x */
    int (*argmax)(const float *x, int n);                   /* lowest index on ties */
} Kernels;

extern const Kernels KERNELS_PORTABLE;
#if defined(__AVX2__) && defined(__FMA__) && !defined(STORYBOT_PORTABLE_ONLY)
#define HAVE_KERNELS_AVX2 1
extern const Kernels KERNELS_AVX2;
#endif
#if defined(__riscv_vector) && !defined(STORYBOT_PORTABLE_ONLY)
#define HAVE_KERNELS_RVV 1
extern const Kernels KERNELS_RVV;
#endif

/* The fastest table this build has, or the portable one when `portable` is set. */
const Kernels *select_kernels(int portable);

/* Portable building blocks the SIMD tables fall back to for shapes they do not handle. */
void portable_matmul_q8(float *out, const int8_t *wq, const float *ws, const QVec *x, int n, int gs, int row0,
                        int row1);
void portable_matmul_q8_f32(float *out, const int8_t *wq, const float *ws, const float *x, int n, int gs,
                            int row0, int row1);
void portable_quantize(QVec *out, const float *x, int n, int gs);
void portable_matmul_q4(float *out, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, const QVec *x, int n,
                        int row0, int row1);
#if defined(HAVE_KERNELS_AVX2)
void avx2_matmul_q4(float *out, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, const QVec *x, int n,
                    int row0, int row1);
#endif
#if defined(HAVE_KERNELS_RVV)
void rvv_matmul_q4(float *out, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, const QVec *x, int n,
                   int row0, int row1);
#endif

#endif
