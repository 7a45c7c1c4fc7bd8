#include "transformer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static void build_run_state(RunState *s, const Model *m, int context, int want_q16) {
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
    for (int i = 0; i < c->head_size / 2; i++) s->rope_freq[i] = 1.0f / powf(10000.0f, (2 * i) / (float)c->head_size);
    if (m->version == 2) {
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
    memset(s, 0, sizeof *s);
}

void build_transformer(Transformer *t, const Model *model, int context, int threads, int portable_kernels) {
    memset(t, 0, sizeof *t);
    t->model = *model; /* takes ownership */
    t->context = context;
    t->kernels = select_kernels(portable_kernels);
#if defined(HAVE_KERNELS_RVV)
    int want_q16 = t->kernels == &KERNELS_RVV;
#else
    int want_q16 = 0;
#endif
    build_run_state(&t->state, &t->model, context, want_q16);
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
    if (model->version == 2 && n % model->group_size == 0) {
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

/* ---------------------------------------------------------------------------------------------------------
 * The small pieces */

static void rmsnorm(float *o, const float *x, const float *weight, int size) {
    float ss = 0.0f;
    for (int j = 0; j < size; j++) ss += x[j] * x[j];
    ss = 1.0f / sqrtf(ss / size + 1e-5f);
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
        const float *q = s->q + h * hs;
        float *att = s->att + (size_t)h * t->context;
        const float *kc = s->key_cache + layer_off + (h / kv_mul) * hs;
        const float *vc = s->value_cache + layer_off + (h / kv_mul) * hs;
        for (int p = 0; p <= a->pos; p++) att[p] = k->dot(q, kc + (size_t)p * kv_dim, hs) / root;
        softmax(att, a->pos + 1);
        float *out = s->xb + h * hs;
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
    for (int i = 0; i < hs / 2; i++) {
        float angle = pos * s->rope_freq[i];
        s->rope_cos[i] = cosf(angle);
        s->rope_sin[i] = sinf(angle);
    }

    for (int l = 0; l < c->n_layers; l++) {
        const Layer *w = &m->layers[l];
        size_t layer_off = (size_t)l * (size_t)t->context * (size_t)kv_dim;
        float *k_row = s->key_cache + layer_off + (size_t)pos * kv_dim;
        float *v_row = s->value_cache + layer_off + (size_t)pos * kv_dim;

        rmsnorm(s->xb, s->x, w->rms_att, dim);
        const Tensor *qkv[3] = {&w->wq, &w->wk, &w->wv};
        float *qkv_out[3] = {s->q, k_row, v_row};
        matmuls(t, s->xb, &s->xq, 3, qkv, qkv_out);
        rope(s->q, dim, hs, s->rope_cos, s->rope_sin);
        rope(k_row, kv_dim, hs, s->rope_cos, s->rope_sin);

        AttentionTask at = {t, l, pos};
        pool_run(c->n_heads > 1 ? t->pool : NULL, attention_task, &at);

        const Tensor *o[1] = {&w->wo};
        float *o_out[1] = {s->xb2};
        matmuls(t, s->xb, &s->xq, 1, o, o_out);
        for (int i = 0; i < dim; i++) s->x[i] += s->xb2[i];

        rmsnorm(s->xb, s->x, w->rms_ffn, dim);
        const Tensor *up[2] = {&w->w1, &w->w3};
        float *up_out[2] = {s->hb, s->hb2};
        matmuls(t, s->xb, &s->xq, 2, up, up_out);
        for (int i = 0; i < hidden; i++) {
            float v = s->hb[i];
            v *= 1.0f / (1.0f + expf(-v)); /* silu(w1 x) * w3 x, rounded as llama2.c does */
            s->hb[i] = v * s->hb2[i];
        }
        const Tensor *down[1] = {&w->w2};
        float *down_out[1] = {s->xb2};
        matmuls(t, s->hb, &s->hq, 1, down, down_out);
        for (int i = 0; i < dim; i++) s->x[i] += s->xb2[i];
    }

    rmsnorm(s->x, s->x, m->rms_final, dim);
    const Tensor *cls[1] = {&m->classifier};
    float *cls_out[1] = {s->logits};
    matmuls(t, s->x, &s->xq, 1, cls, cls_out);
    return s->logits;
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
