/* Helpers of the 4-bit kernels (kernels_q4_*.c; v3 weight_type 2, docs/llama2c-engine.md). */
#ifndef STORYBOT_KERNELS_Q4_H
#define STORYBOT_KERNELS_Q4_H

#include <stdint.h>
#include <string.h>

#include "kernels.h"

#define Q4_GROUP 32
#define Q4_MAX_GROUPS (65536 / Q4_GROUP) /* hidden_dim <= 65536 */

/* fp16 bits -> float without an fp16 unit (the C906 and plain rv64gc have none): the magnitude's bits moved
 * into a float's exponent and mantissa field and scaled by 2^112 give every normal and subnormal half exactly
 * (the converter writes no infinities or NaNs). */
static inline float q4_half(uint16_t h) {
    uint32_t bits = (uint32_t)(h & 0x7fffu) << 13;
    float f;
    memcpy(&f, &bits, sizeof f);
    f *= 0x1p112f;
    memcpy(&bits, &f, sizeof f);
    bits |= (uint32_t)(h & 0x8000u) << 16;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* sx[g] * sum of the group's quantized activations: what each group's m multiplies. */
static inline void q4_group_sums(float *xsum, const QVec *x, int n) {
    for (int g = 0; g < n / Q4_GROUP; g++) {
        const int8_t *q = x->q + (size_t)g * Q4_GROUP;
        int32_t s = 0;
        for (int k = 0; k < Q4_GROUP; k++) s += q[k];
        xsum[g] = (float)s * x->s[g];
    }
}

#endif
