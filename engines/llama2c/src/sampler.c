#include "sampler.h"

#include <math.h>
#include <stdlib.h>

#include "common.h"

void build_sampler(Sampler *s, int vocab_size, float temperature, float top_p, unsigned long long seed,
                   const Kernels *k) {
    *s = (Sampler){.vocab_size = vocab_size, .temperature = temperature, .top_p = top_p, .top_k = 0,
                   .repeat_penalty = 1.0f, .rng_state = seed, .kernels = k};
}

void free_sampler(Sampler *s) {
    free(s->probindex);
    s->probindex = NULL;
}

/* xorshift64*, exactly llama2.c's */
static unsigned random_u32(unsigned long long *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (unsigned)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(unsigned long long *state) { return (random_u32(state) >> 8) / 16777216.0f; }

static int sample_mult(const float *probs, int n, float coin) {
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += probs[i];
        if (coin < cdf) return i;
    }
    return n - 1;
}

static int compare_prob_desc(const void *a, const void *b) {
    const ProbIndex *x = a, *y = b;
    if (x->prob > y->prob) return -1;
    if (x->prob < y->prob) return 1;
    return 0;
}

/* llama2.c's sample_topp, with an optional top-k cut before the nucleus. */
static int sample_topp(Sampler *s, const float *probs, float coin) {
    int n = s->vocab_size;
    if (!s->probindex) s->probindex = xmalloc((size_t)n * sizeof(ProbIndex), "sampler");
    ProbIndex *pi = s->probindex;
    float top_p = s->top_p > 0 && s->top_p < 1 ? s->top_p : 1.0f;
    /* values smaller than (1 - topp) / (n - 1) cannot be part of the result */
    const float cutoff = top_p < 1.0f && n > 1 ? (1.0f - top_p) / (n - 1) : 0.0f;
    int n0 = 0;
    for (int i = 0; i < n; i++) {
        if (probs[i] >= cutoff) {
            pi[n0].index = i;
            pi[n0].prob = probs[i];
            n0++;
        }
    }
    qsort(pi, (size_t)n0, sizeof(ProbIndex), compare_prob_desc);
    if (s->top_k > 0 && s->top_k < n0) n0 = s->top_k;
    float cumulative = 0.0f;
    int last = n0 - 1;
    for (int i = 0; i < n0; i++) {
        cumulative += pi[i].prob;
        if (cumulative > top_p) {
            last = i;
            break;
        }
    }
    float r = coin * cumulative;
    float cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += pi[i].prob;
        if (r < cdf) return pi[i].index;
    }
    return pi[last].index;
}

int sample(Sampler *s, float *logits, const int *recent, int n_recent) {
    if (s->repeat_penalty != 1.0f) {
        for (int i = 0; i < n_recent; i++) {
            float *l = &logits[recent[i]];
            *l = *l > 0 ? *l / s->repeat_penalty : *l * s->repeat_penalty;
        }
    }
    if (s->temperature == 0.0f) return s->kernels->argmax(logits, s->vocab_size);
    for (int i = 0; i < s->vocab_size; i++) logits[i] /= s->temperature;
    softmax(logits, s->vocab_size);
    float coin = random_f32(&s->rng_state);
    int nucleus = s->top_p > 0 && s->top_p < 1;
    if (!nucleus && s->top_k == 0) return sample_mult(logits, s->vocab_size, coin);
    return sample_topp(s, logits, coin);
}
