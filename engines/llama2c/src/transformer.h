/* The forward pass (docs/llama2c-engine.md, "Forward pass") and the context window that slides over it. */
#ifndef STORYBOT_TRANSFORMER_H
#define STORYBOT_TRANSFORMER_H

#include "kernels.h"
#include "model.h"
#include "pool.h"

typedef struct {
    float *x;           /* (dim,) the residual stream */
    float *xb;          /* (dim,) normed input of a branch; attention output */
    float *xb2;         /* (dim,) branch output */
    float *hb;          /* (hidden_dim,) FFN: silu(W1 x) * W3 x */
    float *hb2;         /* (hidden_dim,) FFN: W3 x */
    QVec xq;            /* (dim,) quantized xb (v2) */
    QVec hq;            /* (hidden_dim,) quantized hb (v2) */
    float *q;           /* (dim,) query of the current position */
    float *att;         /* (n_heads, context) attention scores */
    float *logits;      /* (vocab_size,) */
    float *key_cache;   /* (n_layers, context, kv_dim) */
    float *value_cache; /* (n_layers, context, kv_dim) */
    float *rope_freq;   /* (head_size / 2,) 1 / rope_theta^(2i / head_size) */
    float *rope_cos;    /* (head_size / 2,) for the current position */
    float *rope_sin;    /* (head_size / 2,) */
    /* Batched prefill: the same activations for up to `batch` prompt tokens at once, row i for token i. */
    int batch;          /* rows allocated (--batch, at most the context) */
    float *bx, *bxb, *bxb2, *bq;  /* (batch, dim) */
    float *bhb, *bhb2;            /* (batch, hidden_dim) */
    QVec *bxq, *bhq;              /* (batch,) quantized rows of bxb and bhb (v2) */
    float *brope_cos, *brope_sin; /* (batch, head_size / 2) for each token's position */
} RunState;

/* Prompt tokens run through each layer together, so that every weight row is read from memory once per batch
 * instead of once per token (docs/llama2c-engine.md, "Batched prefill"). */
#define PREFILL_BATCH 32

typedef struct {
    Model model;
    RunState state;
    int context;        /* KV-cache positions allocated (--context) */
    int prefill_batch;  /* tokens per prefill batch (--batch): 1 runs the prompt token by token */
    const Kernels *kernels;
    Pool *pool;
} Transformer;

/* Takes over `model` (from build_model) and allocates the run state for `context` positions. */
/* batch: prompt tokens per prefill batch (1-PREFILL_BATCH): the batch activations are allocated for that many rows */
void build_transformer(Transformer *t, const Model *model, int context, int batch, int threads, int portable_kernels);
void free_transformer(Transformer *t);

/* Runs `token` at position `pos` (< context) and returns the logits (vocab_size,). */
float *forward(Transformer *t, int token, int pos);

/* Runs tokens[0..n) at positions pos..pos+n (pos + n <= context) in batches of t->prefill_batch; returns the
 * logits of the last one, the same numbers forward() would give it, or NULL without want_logits (the classifier
 * is skipped). `cancelled` (may be NULL) is polled between batches; *done says how many tokens ran. */
float *forward_batch(Transformer *t, const int *tokens, int n, int pos, int want_logits, int (*cancelled)(void *),
                     void *cancel_arg, int *done);

/* The tokens whose keys and values are in the cache, in position order. When the cache is full, feed()
 * keeps the first `keep` tokens and the newest (context - keep) / 2, recomputes their keys and values from
 * position 0, and then runs the new token. */
typedef struct {
    int *tokens; /* (context,) */
    int count;   /* positions in use */
    int keep;    /* tokens kept at the start when the window shifts */
    int shifts;  /* how many times it shifted (diagnostics) */
} Window;

void build_window(Window *w, const Transformer *t, int keep);
void free_window(Window *w);
/* `cancelled` (may be NULL) is polled between the recomputed tokens of a shift; returns NULL if it fired. */
float *feed(Transformer *t, Window *w, int token, int (*cancelled)(void *), void *cancel_arg);
/* feed() of tokens[0..n) in turn, batched (forward_batch) while they fit the cache without a shift: the logits of
 * the last, or NULL if `cancelled` fired (the window then holds the tokens that ran). */
float *feed_many(Transformer *t, Window *w, const int *tokens, int n, int (*cancelled)(void *), void *cancel_arg);

#endif
