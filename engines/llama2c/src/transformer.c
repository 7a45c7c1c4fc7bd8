#include "transformer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Row i of each of `batch` quantized vectors of n values (groups of gs) in three shared buffers. */
static QVec *build_qvecs(int batch, int n, int gs, int want_q16) {
    QVec *v = xcalloc((size_t)batch, sizeof(QVec), "quantized activations");
    size_t scales = (size_t)(n / gs + 1);
    int8_t *q = xcalloc((size_t)batch * (size_t)n, 1, "quantized activations");
    float *sc = xcalloc((size_t)batch * scales, sizeof(float), "quantized activations");
    int16_t *q16 = want_q16 ? xcalloc((size_t)batch * (size_t)n, sizeof(int16_t), "quantized activations") : NULL;
    for (int i = 0; i < batch; i++) {
        v[i].q = q + (size_t)i * (size_t)n;
        v[i].s = sc + (size_t)i * scales;
        v[i].q16 = q16 ? q16 + (size_t)i * (size_t)n : NULL;
    }
    return v;
}

static void free_qvecs(QVec *v) {
    if (!v) return;
    free(v[0].q);
    free(v[0].s);
    free(v[0].q16);
    free(v);
}

static void build_batch_state(RunState *s, const Model *m, int batch, int want_q16) {
    const Config *c = &m->config;
    size_t b = (size_t)batch;
    s->batch = batch;
    s->bx = xcalloc(b * (size_t)c->dim, sizeof(float), "prefill activations");
    s->bxb = xcalloc(b * (size_t)c->dim, sizeof(float), "prefill activations");
    s->bxb2 = xcalloc(b * (size_t)c->dim, sizeof(float), "prefill activations");
    s->bq = xcalloc(b * (size_t)c->dim, sizeof(float), "prefill activations");
    s->bhb = xcalloc(b * (size_t)c->hidden_dim, sizeof(float), "prefill activations");
    s->bhb2 = xcalloc(b * (size_t)c->hidden_dim, sizeof(float), "prefill activations");
    s->brope_cos = xcalloc(b * (size_t)(c->head_size / 2), sizeof(float), "RoPE table");
    s->brope_sin = xcalloc(b * (size_t)(c->head_size / 2), sizeof(float), "RoPE table");
    if (m->quantized) {
        s->bxq = build_qvecs(batch, c->dim, m->group_size, want_q16);
        s->bhq = build_qvecs(batch, c->hidden_dim, m->group_size, want_q16);
    }
}

static void build_run_state(RunState *s, const Model *m, int context, int batch, int want_q16) {
    const Config *c = &m->config;
    size_t kv = (size_t)c->n_layers * (size_t)context * (size_t)c->kv_dim;
    s->x = xcalloc(c->dim, sizeof(float), "activations");
    s->xb = xcalloc(c->dim, sizeof(float), "activations");
    s->xb2 = xcalloc(c->dim, sizeof(float), "activations");
    s->hb = xcalloc(c->hidden_dim, sizeof(float), "activations");
    s->hb2 = xcalloc(c->hidden_dim, sizeof(float), "activations");
    s->q = xcalloc(c->dim, sizeof(float), "activations");
    s->att = xcalloc((size_t)c->n_heads * (size_t)context, sizeof(float), "attention scores");
    s->logits = xcalloc(c->vocab_size, sizeof(float), "logits");
    s->key_cache = xcalloc(kv, sizeof(float), "KV cache");
    s->value_cache = xcalloc(kv, sizeof(float), "KV cache");
    s->rope_freq = xcalloc(c->head_size / 2, sizeof(float), "RoPE table");
    s->rope_cos = xcalloc(c->head_size / 2, sizeof(float), "RoPE table");
    s->rope_sin = xcalloc(c->head_size / 2, sizeof(float), "RoPE table");
    for (int i = 0; i < c->head_size / 2; i++) s->rope_freq[i] = 1.0f / powf(m->rope_theta, (2 * i) / (float)c->head_size);
    if (m->quantized) {
        int gs = m->group_size;
        s->xq.q = xcalloc(c->dim, 1, "quantized activations");
        s->xq.s = xcalloc(c->dim / gs + 1, sizeof(float), "quantized activations");
        s->hq.q = xcalloc(c->hidden_dim, 1, "quantized activations");
        s->hq.s = xcalloc(c->hidden_dim / gs + 1, sizeof(float), "quantized activations");
        if (want_q16) {
            s->xq.q16 = xcalloc(c->dim, sizeof(int16_t), "quantized activations");
            s->hq.q16 = xcalloc(c->hidden_dim, sizeof(int16_t), "quantized activations");
        }
    }
    build_batch_state(s, m, context < batch ? context : batch, want_q16); /* rows for --batch only: memory */
}

static void free_run_state(RunState *s) {
    free(s->x);
    free(s->xb);
    free(s->xb2);
    free(s->hb);
    free(s->hb2);
    free(s->q);
    free(s->att);
    free(s->logits);
    free(s->key_cache);
    free(s->value_cache);
    free(s->rope_freq);
    free(s->rope_cos);
    free(s->rope_sin);
    free(s->xq.q);
    free(s->xq.q16);
    free(s->xq.s);
    free(s->hq.q);
    free(s->hq.q16);
    free(s->hq.s);
    free(s->bx);
    free(s->bxb);
    free(s->bxb2);
    free(s->bq);
    free(s->bhb);
    free(s->bhb2);
    free(s->brope_cos);
    free(s->brope_sin);
    free_qvecs(s->bxq);
    free_qvecs(s->bhq);
    memset(s, 0, sizeof *s);
}

void build_transformer(Transformer *t, const Model *model, int context, int batch, int threads, int portable_kernels) {
    memset(t, 0, sizeof *t);
    t->model = *model; /* takes ownership */
    t->context = context;
    t->kernels = select_kernels(portable_kernels);
#if defined(HAVE_KERNELS_RVV)
    int want_q16 = t->kernels == &KERNELS_RVV;
#else
    int want_q16 = 0;
#endif
    build_run_state(&t->state, &t->model, context, batch, want_q16);
    t->prefill_batch = t->state.batch;
    t->pool = build_pool(threads);
}

void free_transformer(Transformer *t) {
    free_pool(t->pool);
    free_run_state(&t->state);
    free_model(&t->model);
}

/* ---------------------------------------------------------------------------------------------------------
 * Matmuls: up to three weight matrices that read the same input run as one pool task, their rows split
 * evenly over the threads. */

typedef struct {
    const Kernels *k;
    const float *x;     /* (n,) fp32 input */
    const QVec *xq;     /* (n,) the same, quantized (v2 when n % gs == 0), else NULL */
    int n, gs;
    int count;
    const Tensor *w[3];
    float *out[3];
    int total_rows;
} MatmulTask;

static void run_rows(const MatmulTask *m, const Tensor *w, float *out, int row0, int row1) {
    if (w->f) m->k->matmul_f32(out, w->f, m->x, m->n, row0, row1);
    else if (w->q4) m->k->matmul_q4(out, w->q4, w->d4, w->m4, m->xq, m->n, row0, row1); /* xq: n % 32 == 0 */
    else if (m->xq) m->k->matmul_q8(out, w->q, w->s, m->xq, m->n, m->gs, row0, row1);
    else m->k->matmul_q8_f32(out, w->q, w->s, m->x, m->n, m->gs, row0, row1);
}

static void matmul_task(void *arg, int thread, int n_threads) {
    const MatmulTask *m = arg;
    int begin = (int)((long long)m->total_rows * thread / n_threads);
    int end = (int)((long long)m->total_rows * (thread + 1) / n_threads);
    int base = 0;
    for (int j = 0; j < m->count; j++) {
        int rows = m->w[j]->rows;
        int r0 = begin > base ? begin - base : 0;
        int r1 = end - base < rows ? end - base : rows;
        if (r0 < r1) run_rows(m, m->w[j], m->out[j], r0, r1);
        base += rows;
    }
}

/* out[j] = w[j] x for j < count; every w[j] has x's length as its column count. */
static void matmuls(Transformer *t, const float *x, QVec *xq, int count, const Tensor *const *w, float **out) {
    const Model *model = &t->model;
    int n = w[0]->cols;
    MatmulTask task = {.k = t->kernels, .x = x, .n = n, .gs = model->group_size, .count = count};
    if (model->quantized && n % model->group_size == 0) {
        t->kernels->quantize(xq, x, n, model->group_size);
        task.xq = xq;
    }
    for (int j = 0; j < count; j++) {
        task.w[j] = w[j];
        task.out[j] = out[j];
        task.total_rows += w[j]->rows;
    }
    pool_run(t->pool, matmul_task, &task);
}

/* The same for `tokens` inputs at once: x row i (stride n) gives out[j] row i (stride out_stride[j]). Each thread
 * takes its rows (split as matmuls() splits them) a tile at a time and runs every token's input through the tile
 * before the next, so a weight row comes from memory once per batch and from L1 for the other tokens. Every row
 * is computed by the same kernel call on the same (quantized) input as matmuls() would: the numbers are equal. */
#define TILE_BYTES 16384 /* a tile of weight rows, with room beside it in a 32 KB L1 for the inputs */

typedef struct {
    MatmulTask one;     /* k, n, gs, count, w, total_rows as matmuls() sets them */
    int tokens;
    const float *x;     /* (tokens, n) */
    const QVec *xq;     /* (tokens,) or NULL */
    size_t out_stride[3];
} BatchTask;

static int tile_rows(const Tensor *w, int n, int gs) {
    size_t row_bytes = w->f ? (size_t)n * 4 : (size_t)n + (size_t)(n / gs) * 4;
    int rows = (int)(TILE_BYTES / row_bytes) & ~3; /* whole groups of four for the 4-row kernels */
    return rows < 4 ? 4 : rows;
}

static void batch_task(void *arg, int thread, int n_threads) {
    const BatchTask *b = arg;
    const MatmulTask *m = &b->one;
    int begin = (int)((long long)m->total_rows * thread / n_threads);
    int end = (int)((long long)m->total_rows * (thread + 1) / n_threads);
    int base = 0;
    for (int j = 0; j < m->count; j++) {
        int rows = m->w[j]->rows;
        int r0 = begin > base ? begin - base : 0;
        int r1 = end - base < rows ? end - base : rows;
        int tile = tile_rows(m->w[j], m->n, m->gs);
        for (int a = r0; a < r1; a += tile) {
            int z = a + tile < r1 ? a + tile : r1;
            for (int i = 0; i < b->tokens; i++) {
                MatmulTask one = *m;
                one.x = b->x + (size_t)i * (size_t)m->n;
                one.xq = b->xq ? &b->xq[i] : NULL;
                run_rows(&one, m->w[j], m->out[j] + (size_t)i * b->out_stride[j], a, z);
            }
        }
        base += rows;
    }
}

static void batch_matmuls(Transformer *t, const float *x, QVec *xq, int tokens, int count, const Tensor *const *w,
                          float **out, const size_t *out_stride) {
    const Model *model = &t->model;
    int n = w[0]->cols;
    BatchTask task = {.one = {.k = t->kernels, .n = n, .gs = model->group_size, .count = count}, .tokens = tokens,
                      .x = x};
    if (model->quantized && n % model->group_size == 0) {
        for (int i = 0; i < tokens; i++) t->kernels->quantize(&xq[i], x + (size_t)i * (size_t)n, n, model->group_size);
        task.xq = xq;
    }
    for (int j = 0; j < count; j++) {
        task.one.w[j] = w[j];
        task.one.out[j] = out[j];
        task.one.total_rows += w[j]->rows;
        task.out_stride[j] = out_stride[j];
    }
    pool_run(t->pool, batch_task, &task);
}

/* ---------------------------------------------------------------------------------------------------------
 * The small pieces */

static void rmsnorm(float *o, const float *x, const float *weight, int size, float eps) {
    float ss = 0.0f;
    for (int j = 0; j < size; j++) ss += x[j] * x[j];
    ss = 1.0f / sqrtf(ss / size + eps);
    for (int j = 0; j < size; j++) o[j] = weight[j] * (ss * x[j]);
}

/* Rotates the pairs (2i, 2i+1) of each head of `vec` (n_heads_in_vec * head_size,). */
static void rope(float *vec, int n, int head_size, const float *cos_t, const float *sin_t) {
    for (int h = 0; h < n; h += head_size) {
        for (int i = 0; i < head_size / 2; i++) {
            float v0 = vec[h + 2 * i], v1 = vec[h + 2 * i + 1];
            vec[h + 2 * i] = v0 * cos_t[i] - v1 * sin_t[i];
            vec[h + 2 * i + 1] = v0 * sin_t[i] + v1 * cos_t[i];
        }
    }
}

static void add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}

/* h = silu(h) * h2: silu(w1 x) * w3 x, rounded as llama2.c does */
static void swiglu(float *h, const float *h2, int n) {
    for (int i = 0; i < n; i++) {
        float v = h[i];
        v *= 1.0f / (1.0f + expf(-v));
        h[i] = v * h2[i];
    }
}

static void rope_table(float *cos_t, float *sin_t, const float *freq, int pos, int half) {
    for (int i = 0; i < half; i++) {
        float angle = pos * freq[i];
        cos_t[i] = cosf(angle);
        sin_t[i] = sinf(angle);
    }
}

static void embed(const Model *m, int token, float *x) {
    const Tensor *e = &m->embedding;
    int dim = m->config.dim;
    size_t base = (size_t)token * (size_t)dim;
    if (e->f) {
        memcpy(x, e->f + base, (size_t)dim * sizeof(float));
        return;
    }
    for (int i = 0; i < dim; i++) x[i] = e->q[base + i] * e->s[(base + i) / (size_t)m->group_size];
}

typedef struct {
    Transformer *t;
    int layer, pos;
    const float *q; /* (dim,) the query at pos */
    float *out;     /* (dim,) */
} AttentionTask;

static void attention_task(void *arg, int thread, int n_threads) {
    const AttentionTask *a = arg;
    Transformer *t = a->t;
    const Config *c = &t->model.config;
    RunState *s = &t->state;
    const Kernels *k = t->kernels;
    int hs = c->head_size, kv_dim = c->kv_dim, kv_mul = c->n_heads / c->n_kv_heads;
    size_t layer_off = (size_t)a->layer * (size_t)t->context * (size_t)kv_dim;
    float root = sqrtf((float)hs);
    for (int h = thread; h < c->n_heads; h += n_threads) {
        const float *q = a->q + h * hs;
        float *att = s->att + (size_t)h * t->context;
        const float *kc = s->key_cache + layer_off + (h / kv_mul) * hs;
        const float *vc = s->value_cache + layer_off + (h / kv_mul) * hs;
        for (int p = 0; p <= a->pos; p++) att[p] = k->dot(q, kc + (size_t)p * kv_dim, hs) / root;
        softmax(att, a->pos + 1);
        float *out = a->out + h * hs;
        memset(out, 0, (size_t)hs * sizeof(float));
        for (int p = 0; p <= a->pos; p++) k->axpy(out, att[p], vc + (size_t)p * kv_dim, hs);
    }
}

float *forward(Transformer *t, int token, int pos) {
    const Model *m = &t->model;
    const Config *c = &m->config;
    RunState *s = &t->state;
    int dim = c->dim, hidden = c->hidden_dim, kv_dim = c->kv_dim, hs = c->head_size;

    embed(m, token, s->x);
    rope_table(s->rope_cos, s->rope_sin, s->rope_freq, pos, hs / 2);

    for (int l = 0; l < c->n_layers; l++) {
        const Layer *w = &m->layers[l];
        size_t layer_off = (size_t)l * (size_t)t->context * (size_t)kv_dim;
        float *k_row = s->key_cache + layer_off + (size_t)pos * kv_dim;
        float *v_row = s->value_cache + layer_off + (size_t)pos * kv_dim;

        rmsnorm(s->xb, s->x, w->rms_att, dim, m->norm_eps);
        const Tensor *qkv[3] = {&w->wq, &w->wk, &w->wv};
        float *qkv_out[3] = {s->q, k_row, v_row};
        matmuls(t, s->xb, &s->xq, 3, qkv, qkv_out);
        rope(s->q, dim, hs, s->rope_cos, s->rope_sin);
        rope(k_row, kv_dim, hs, s->rope_cos, s->rope_sin);

        AttentionTask at = {t, l, pos, s->q, s->xb};
        pool_run(c->n_heads > 1 ? t->pool : NULL, attention_task, &at);

        const Tensor *o[1] = {&w->wo};
        float *o_out[1] = {s->xb2};
        matmuls(t, s->xb, &s->xq, 1, o, o_out);
        add(s->x, s->xb2, dim);

        rmsnorm(s->xb, s->x, w->rms_ffn, dim, m->norm_eps);
        const Tensor *up[2] = {&w->w1, &w->w3};
        float *up_out[2] = {s->hb, s->hb2};
        matmuls(t, s->xb, &s->xq, 2, up, up_out);
        swiglu(s->hb, s->hb2, hidden);
        const Tensor *down[1] = {&w->w2};
        float *down_out[1] = {s->xb2};
        matmuls(t, s->hb, &s->hq, 1, down, down_out);
        add(s->x, s->xb2, dim);
    }

    rmsnorm(s->x, s->x, m->rms_final, dim, m->norm_eps);
    const Tensor *cls[1] = {&m->classifier};
    float *cls_out[1] = {s->logits};
    matmuls(t, s->x, &s->xq, 1, cls, cls_out);
    return s->logits;
}

/* forward() of tokens[0..n) (n <= the batch rows) at positions pos.., each step as forward() takes it but every
 * matmul over the n tokens at once; the classifier only for the last token, and only with want_logits. */
static float *forward_rows(Transformer *t, const int *tokens, int n, int pos, int want_logits) {
    const Model *m = &t->model;
    const Config *c = &m->config;
    RunState *s = &t->state;
    int dim = c->dim, hidden = c->hidden_dim, kv_dim = c->kv_dim, hs = c->head_size, half = hs / 2;
    size_t sdim = (size_t)dim, shidden = (size_t)hidden;

    for (int i = 0; i < n; i++) {
        embed(m, tokens[i], s->bx + i * sdim);
        rope_table(s->brope_cos + (size_t)i * half, s->brope_sin + (size_t)i * half, s->rope_freq, pos + i, half);
    }
    for (int l = 0; l < c->n_layers; l++) {
        const Layer *w = &m->layers[l];
        size_t layer_off = (size_t)l * (size_t)t->context * (size_t)kv_dim;
        float *k_rows = s->key_cache + layer_off + (size_t)pos * kv_dim;
        float *v_rows = s->value_cache + layer_off + (size_t)pos * kv_dim;

        for (int i = 0; i < n; i++) rmsnorm(s->bxb + i * sdim, s->bx + i * sdim, w->rms_att, dim, m->norm_eps);
        const Tensor *qkv[3] = {&w->wq, &w->wk, &w->wv};
        float *qkv_out[3] = {s->bq, k_rows, v_rows};
        size_t qkv_stride[3] = {sdim, (size_t)kv_dim, (size_t)kv_dim};
        batch_matmuls(t, s->bxb, s->bxq, n, 3, qkv, qkv_out, qkv_stride);
        for (int i = 0; i < n; i++) {
            const float *cos_t = s->brope_cos + (size_t)i * half, *sin_t = s->brope_sin + (size_t)i * half;
            rope(s->bq + i * sdim, dim, hs, cos_t, sin_t);
            rope(k_rows + (size_t)i * kv_dim, kv_dim, hs, cos_t, sin_t);
        }
        /* token i attends to positions <= pos + i, whose keys and values are all in the cache by now */
        for (int i = 0; i < n; i++) {
            AttentionTask at = {t, l, pos + i, s->bq + i * sdim, s->bxb + i * sdim};
            pool_run(c->n_heads > 1 ? t->pool : NULL, attention_task, &at);
        }

        const Tensor *o[1] = {&w->wo};
        float *o_out[1] = {s->bxb2};
        size_t dim_stride[1] = {sdim};
        batch_matmuls(t, s->bxb, s->bxq, n, 1, o, o_out, dim_stride);
        for (int i = 0; i < n; i++) {
            add(s->bx + i * sdim, s->bxb2 + i * sdim, dim);
            rmsnorm(s->bxb + i * sdim, s->bx + i * sdim, w->rms_ffn, dim, m->norm_eps);
        }
        const Tensor *up[2] = {&w->w1, &w->w3};
        float *up_out[2] = {s->bhb, s->bhb2};
        size_t up_stride[2] = {shidden, shidden};
        batch_matmuls(t, s->bxb, s->bxq, n, 2, up, up_out, up_stride);
        for (int i = 0; i < n; i++) swiglu(s->bhb + i * shidden, s->bhb2 + i * shidden, hidden);
        const Tensor *down[1] = {&w->w2};
        float *down_out[1] = {s->bxb2};
        batch_matmuls(t, s->bhb, s->bhq, n, 1, down, down_out, dim_stride);
        for (int i = 0; i < n; i++) add(s->bx + i * sdim, s->bxb2 + i * sdim, dim);
    }
    if (!want_logits) return NULL;
    rmsnorm(s->x, s->bx + (size_t)(n - 1) * sdim, m->rms_final, dim, m->norm_eps);
    const Tensor *cls[1] = {&m->classifier};
    float *cls_out[1] = {s->logits};
    matmuls(t, s->x, &s->xq, 1, cls, cls_out);
    return s->logits;
}

float *forward_batch(Transformer *t, const int *tokens, int n, int pos, int want_logits, int (*cancelled)(void *),
                     void *cancel_arg, int *done) {
    int batch = t->prefill_batch < t->state.batch ? t->prefill_batch : t->state.batch;
    if (batch < 1) batch = 1;
    float *logits = NULL;
    *done = 0;
    for (int i = 0; i < n; i += batch) {
        if (cancelled && cancelled(cancel_arg)) return NULL;
        int rows = n - i < batch ? n - i : batch;
        logits = forward_rows(t, tokens + i, rows, pos + i, want_logits && i + rows == n);
        *done = i + rows;
    }
    return logits;
}

/* ---------------------------------------------------------------------------------------------------------
 * The sliding context window */

void build_window(Window *w, const Transformer *t, int keep) {
    w->tokens = xcalloc(t->context, sizeof(int), "context window");
    w->count = 0;
    w->keep = keep;
    w->shifts = 0;
}

void free_window(Window *w) {
    free(w->tokens);
    w->tokens = NULL;
}

static int shift_window(Transformer *t, Window *w, int (*cancelled)(void *), void *cancel_arg) {
    int C = t->context;
    int keep = w->keep < C ? w->keep : C - 1;
    int newest = (C - keep) / 2;
    memmove(w->tokens + keep, w->tokens + C - newest, (size_t)newest * sizeof(int));
    w->count = keep + newest;
    w->shifts++;
    if (t->prefill_batch > 1) {
        int done;
        forward_batch(t, w->tokens, w->count, 0, 0, cancelled, cancel_arg, &done);
        if (done < w->count) {
            w->count = done; /* the cache holds exactly the tokens recomputed so far */
            return 0;
        }
        return 1;
    }
    for (int pos = 0; pos < w->count; pos++) {
        if (cancelled && cancelled(cancel_arg)) {
            w->count = pos; /* the cache holds exactly the tokens recomputed so far */
            return 0;
        }
        forward(t, w->tokens[pos], pos);
    }
    return 1;
}

float *feed(Transformer *t, Window *w, int token, int (*cancelled)(void *), void *cancel_arg) {
    if (w->count == t->context && !shift_window(t, w, cancelled, cancel_arg)) return NULL;
    int pos = w->count;
    w->tokens[w->count++] = token;
    return forward(t, token, pos);
}

float *feed_many(Transformer *t, Window *w, const int *tokens, int n, int (*cancelled)(void *), void *cancel_arg) {
    float *logits = NULL;
    int i = 0;
    while (i < n) {
        int room = t->context - w->count, rows = n - i < room ? n - i : room;
        if (t->prefill_batch > 1 && rows > 1) {
            int done;
            memcpy(w->tokens + w->count, tokens + i, (size_t)rows * sizeof(int));
            logits = forward_batch(t, tokens + i, rows, w->count, 1, cancelled, cancel_arg, &done);
            w->count += done;
            i += done;
            if (!logits) return NULL;
            continue;
        }
        if (cancelled && cancelled(cancel_arg)) return NULL;
        logits = feed(t, w, tokens[i++], cancelled, cancel_arg);
        if (!logits) return NULL;
    }
    return logits;
}
