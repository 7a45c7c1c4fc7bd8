/* llama2.c's sampler (argmax at temperature 0, else softmax with top-p, xorshift random numbers), plus the
 * protocol's top_k and repeat_penalty, which llama2.c lacks and which stay off on the command line. */
#ifndef STORYBOT_SAMPLER_H
#define STORYBOT_SAMPLER_H

#include "kernels.h"

typedef struct {
    float prob;
    int index;
} ProbIndex;

typedef struct {
    int vocab_size;
    float temperature;    /* 0 = greedy */
    float top_p;          /* nucleus sampling when 0 < top_p < 1 */
    int top_k;            /* 0 = off */
    float repeat_penalty; /* 1 = off */
    unsigned long long rng_state;
    ProbIndex *probindex; /* (vocab_size,) allocated on first use */
    const Kernels *kernels;
} Sampler;

void build_sampler(Sampler *s, int vocab_size, float temperature, float top_p, unsigned long long seed,
                   const Kernels *k);
void free_sampler(Sampler *s);

/* Samples the next token; `logits` (vocab_size,) is overwritten. recent (n_recent,) are the tokens the
 * repeat penalty applies to. */
int sample(Sampler *s, float *logits, const int *recent, int n_recent);

#endif
