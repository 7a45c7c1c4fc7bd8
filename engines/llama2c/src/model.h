/* A llama2.c checkpoint (format v0, v1, v2) or storybot's v3, validated and mapped. See docs/llama2c-engine.md. */
#ifndef STORYBOT_MODEL_H
#define STORYBOT_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int dim;        /* transformer width */
    int hidden_dim; /* FFN width */
    int n_layers;
    int n_heads;    /* query heads */
    int n_kv_heads; /* key/value heads (< n_heads: grouped-query attention) */
    int vocab_size; /* always positive here; v0's sign trick is decoded into shared_classifier */
    int seq_len;    /* positions the model was trained for */
    int head_size;  /* dim / n_heads */
    int kv_dim;     /* dim * n_kv_heads / n_heads */
} Config;

/* A weight matrix W (rows, cols), either fp32 or int8 in groups of `group_size` consecutive values of the
 * flattened tensor (groups may cross rows when cols % group_size != 0). */
typedef struct {
    const float *f;  /* (rows, cols) fp32 values; NULL when quantized */
    const int8_t *q; /* (rows, cols) int8 values */
    const float *s;  /* (rows * cols / group_size,) scales: value = q * s[index / group_size] */
    /* 4-bit groups of 32 within rows (v3 weight_type 2; q, s and f are NULL): value k of row i is
     * nibble * d + m of its group g = (i * cols + k) / 32; byte j of a group holds value j (low nibble) and
     * value j + 16 (high nibble); d and m are fp16 bit patterns */
    const uint8_t *q4;  /* (rows * cols / 2,) */
    const uint16_t *d4; /* (rows * cols / 32,) */
    const uint16_t *m4; /* (rows * cols / 32,) */
    int rows, cols;
} Tensor;

typedef struct {
    const float *rms_att; /* (dim,) */
    const float *rms_ffn; /* (dim,) */
    Tensor wq;            /* (dim, dim) */
    Tensor wk;            /* (kv_dim, dim) */
    Tensor wv;            /* (kv_dim, dim) */
    Tensor wo;            /* (dim, dim) */
    Tensor w1;            /* (hidden_dim, dim) */
    Tensor w2;            /* (dim, hidden_dim) */
    Tensor w3;            /* (hidden_dim, dim) */
} Layer;

typedef struct {
    Config config;
    int version;      /* 0, 1, 2 or 3 */
    int quantized;    /* int8 groups: v2, or v3 with weight_type 1 or 2 (activations are quantized) */
    int q4;           /* v3 weight_type 2: the layer matrices are 4-bit, embedding and classifier int8 */
    int group_size;   /* quantized only; 0 for fp32 checkpoints */
    float rope_theta; /* v3's header; 10000 for older files */
    float norm_eps;   /* v3's header; 1e-5 for older files */
    uint64_t meta_offset, meta_size; /* v3: the metadata block (tokenizer), inside `data` */
    int shared_classifier;
    Tensor embedding; /* (vocab_size, dim) */
    Tensor classifier;/* (vocab_size, dim); the embedding itself when shared */
    const float *rms_final; /* (dim,) */
    Layer *layers;    /* (n_layers,) */
    /* where the bytes live */
    const char *path;
    uint8_t *data;    /* the whole file, mapped or read */
    size_t size;      /* bytes */
    int is_mapped;
    float *aligned_scales; /* copies of v2 scales that are not 4-byte aligned in the file (rare), or NULL */
} Model;

typedef enum { LOAD_MMAP, LOAD_READ } LoadMode;

/* Validates the checkpoint against the contract and maps it; exits with the contract's status on any
 * mismatch, naming the file and the problem in one stderr line. */
void build_model(Model *m, const char *path, LoadMode mode);
void free_model(Model *m);
/* v3: drops the mapped pages of the metadata block once the tokenizer has been built from it. */
void release_metadata(Model *m);

#endif
