/* Checkpoint validation and mapping. Every size is computed in 64 bits with overflow checks and compared
 * with the file's size before any weight is touched, so no malformed file can make us read out of bounds. */
#define _DEFAULT_SOURCE /* madvise */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define MAGIC 0x616b3432u
#define V0_HEADER_BYTES 28
#define V12_HEADER_BYTES 256

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Appended to header complaints about files without the v1/v2 magic, which may not be checkpoints at all. */
static const char *header_note = "";

/* Dies with 65 unless lo <= value <= hi. */
static void check_range(const char *path, const char *name, long long value, long long lo, long long hi) {
    if (value < lo || value > hi)
        die(EXIT_MODEL_MALFORMED, "%s: header field %s is %lld, expected %lld..%lld%s", path, name, value, lo, hi,
            header_note);
}

static void validate_config(const char *path, Config *c) {
    check_range(path, "dim", c->dim, 1, 16384);
    check_range(path, "hidden_dim", c->hidden_dim, 1, 65536);
    check_range(path, "n_layers", c->n_layers, 1, 256);
    check_range(path, "n_heads", c->n_heads, 1, 256);
    check_range(path, "n_kv_heads", c->n_kv_heads, 1, c->n_heads);
    check_range(path, "vocab_size", c->vocab_size, 1, 1000000);
    check_range(path, "seq_len", c->seq_len, 1, 1048576);
    if (c->dim % c->n_heads != 0)
        die(EXIT_MODEL_MALFORMED, "%s: dim %d is not a multiple of n_heads %d%s", path, c->dim, c->n_heads,
            header_note);
    if (c->n_heads % c->n_kv_heads != 0)
        die(EXIT_MODEL_MALFORMED, "%s: n_heads %d is not a multiple of n_kv_heads %d%s", path, c->n_heads,
            c->n_kv_heads, header_note);
    c->head_size = c->dim / c->n_heads;
    if (c->head_size % 2 != 0)
        die(EXIT_MODEL_MALFORMED, "%s: head_size %d (dim / n_heads) is odd; RoPE needs pairs%s", path, c->head_size,
            header_note);
    c->kv_dim = c->dim / c->n_heads * c->n_kv_heads;
}

/* A running byte offset over the checkpoint's tensors in file order. */
typedef struct {
    uint64_t offset;   /* running byte offset while laying out */
    int quantized;     /* v2 */
    int q4;            /* v3 weight_type 2: the layer matrices (not the embedding or classifier) are 4-bit */
    int group_size;
    int failed;        /* a count was not a multiple of the group size */
    const char *bad_name;
    uint64_t bad_count;
} Layout;

/* Advances the layout over one tensor of `count` elements and returns where its values start. */
static uint64_t place(Layout *lay, const char *name, uint64_t count, uint64_t *scales_at) {
    uint64_t at = lay->offset;
    if (!lay->quantized) {
        lay->offset += count * 4;
        return at;
    }
    if (count % (uint64_t)lay->group_size != 0 && !lay->failed) {
        lay->failed = 1;
        lay->bad_name = name;
        lay->bad_count = count;
    }
    *scales_at = at + count;
    lay->offset += count + count / (uint64_t)lay->group_size * 4;
    return at;
}

#define Q4_GROUP 32

/* A 4-bit tensor in the file: its nibbles, then the fp16 d of each group, then the fp16 m. */
static uint64_t q4_tensor_bytes(uint64_t count) { return count / 2 + count / Q4_GROUP * 4; }

static const char *const MATRIX_NAMES[7] = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};

static void matrix_shape(const Config *c, int which, int *rows, int *cols) {
    switch (which) {
    case 0: *rows = c->dim; *cols = c->dim; break;
    case 1: case 2: *rows = c->kv_dim; *cols = c->dim; break;
    case 3: *rows = c->dim; *cols = c->dim; break;
    case 4: case 6: *rows = c->hidden_dim; *cols = c->dim; break;
    default: *rows = c->dim; *cols = c->hidden_dim; break;
    }
}

/* Every offset below is at most a few terabytes (the header ranges bound each factor), far from 2^64, so
 * plain uint64 arithmetic cannot overflow once validate_config() has passed. */
static uint64_t expected_size(const Model *m, Layout *lay) {
    const Config *c = &m->config;
    uint64_t L = (uint64_t)c->n_layers, dim = (uint64_t)c->dim, V = (uint64_t)c->vocab_size;
    uint64_t ignored;
    if (m->version == 0) {
        lay->offset = V0_HEADER_BYTES;
        place(lay, "token_embedding", V * dim, &ignored);
        place(lay, "rms_att", L * dim, &ignored);
        for (int w = 0; w < 4; w++) {
            int rows, cols;
            matrix_shape(c, w, &rows, &cols);
            place(lay, MATRIX_NAMES[w], L * (uint64_t)rows * (uint64_t)cols, &ignored);
        }
        place(lay, "rms_ffn", L * dim, &ignored);
        for (int w = 4; w < 7; w++) {
            int rows, cols;
            matrix_shape(c, w, &rows, &cols);
            place(lay, MATRIX_NAMES[w], L * (uint64_t)rows * (uint64_t)cols, &ignored);
        }
        place(lay, "rms_final", dim, &ignored);
        place(lay, "freq_cis", (uint64_t)c->seq_len * (uint64_t)(c->head_size / 2) * 2, &ignored);
    } else {
        lay->offset = V12_HEADER_BYTES;
        int q = lay->quantized;
        lay->quantized = 0; /* the norms stay fp32 in v2 */
        place(lay, "norms", (2 * L + 1) * dim, &ignored);
        lay->quantized = q;
        place(lay, "token_embedding", V * dim, &ignored);
        for (int w = 0; w < 7; w++) {
            int rows, cols;
            matrix_shape(c, w, &rows, &cols);
            for (uint64_t l = 0; l < L; l++) {
                uint64_t count = (uint64_t)rows * (uint64_t)cols;
                if (lay->q4) lay->offset += q4_tensor_bytes(count);
                else place(lay, MATRIX_NAMES[w], count, &ignored);
            }
        }
    }
    if (!m->shared_classifier) place(lay, "wcls", V * dim, &ignored);
    return lay->offset;
}

static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

static float lef32(const uint8_t *p) {
    uint32_t u = le32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* v3's fields after the config (docs/llama2c-engine.md, "Format v3"). */
static void read_v3_fields(Model *m, const uint8_t *h) {
    const char *path = m->path;
    uint32_t weight_type = le32(h + 44);
    if (weight_type > 2)
        die(EXIT_MODEL_MALFORMED, "%s: header field weight_type is %u, expected 0 (fp32), 1 (int8) or 2 (q4)", path,
            weight_type);
    m->quantized = weight_type >= 1;
    m->q4 = weight_type == 2;
    int gs = (int32_t)le32(h + 40);
    if (m->q4 && gs != Q4_GROUP) /* 4-bit: GGUF's blocks of 32 only */
        die(EXIT_MODEL_MALFORMED, "%s: header field group_size is %d, expected %d for 4-bit weights (weight_type 2)",
            path, gs, Q4_GROUP);
    else if (m->quantized) check_range(path, "group_size", gs, 1, 4096);
    else check_range(path, "group_size", gs, 0, 0);
    m->group_size = gs;
    m->rope_theta = lef32(h + 48);
    m->norm_eps = lef32(h + 52);
    if (!(m->rope_theta >= 1.0f && m->rope_theta <= 1e9f)) /* also refuses NaN */
        die(EXIT_MODEL_MALFORMED, "%s: header field rope_theta is %g, expected 1..1e9", path, (double)m->rope_theta);
    if (!(m->norm_eps > 0.0f && m->norm_eps <= 0.1f))
        die(EXIT_MODEL_MALFORMED, "%s: header field norm_eps is %g, expected > 0 and <= 0.1", path,
            (double)m->norm_eps);
    m->meta_offset = le64(h + 56);
    m->meta_size = le64(h + 64);
}

static void read_header(Model *m, int fd, uint64_t file_size) {
    const char *path = m->path;
    char n1[32], n2[32], n3[32];
    uint8_t h[V12_HEADER_BYTES];
    memset(h, 0, sizeof h);
    size_t want = file_size < sizeof h ? (size_t)file_size : sizeof h;
    ssize_t got = pread(fd, h, want, 0);
    if (got < 0) die(EXIT_MISSING, "%s: cannot read: %s", path, strerror(errno));
    if ((size_t)got < want) die(EXIT_MISSING, "%s: short read of the header", path);
    if (file_size < V0_HEADER_BYTES)
        die(EXIT_MODEL_SIZE, "%s: size %s bytes, shorter than the %d-byte header", path, fmt_count(file_size, n1),
            V0_HEADER_BYTES);
    const uint8_t *cfg = h;
    m->rope_theta = 10000.0f;
    m->norm_eps = 1e-5f;
    if (le32(h) == MAGIC) {
        int version = (int32_t)le32(h + 4);
        if (file_size >= 41 && (version < 1 || version > 3))
            die(EXIT_MODEL_MALFORMED, "%s: unknown version %d (magic ak42 with version 1, 2 or 3 expected)", path,
                version);
        if (file_size < V12_HEADER_BYTES)
            die(EXIT_MODEL_SIZE, "%s: size %s bytes, shorter than the %d-byte v%d header", path,
                fmt_count(file_size, n1), V12_HEADER_BYTES, version);
        m->version = version;
        cfg = h + 8;
        if (h[36] > 1) die(EXIT_MODEL_MALFORMED, "%s: shared_classifier byte is %d, expected 0 or 1", path, h[36]);
        m->shared_classifier = h[36];
        if (version == 2) {
            int gs = (int32_t)le32(h + 37);
            check_range(path, "group_size", gs, 1, 4096);
            m->group_size = gs;
            m->quantized = 1;
        } else if (version == 3) {
            read_v3_fields(m, h);
        }
    } else {
        m->version = 0;
    }
    int32_t f[7];
    for (int i = 0; i < 7; i++) f[i] = (int32_t)le32(cfg + 4 * i);
    Config *c = &m->config;
    c->dim = f[0];
    c->hidden_dim = f[1];
    c->n_layers = f[2];
    c->n_heads = f[3];
    c->n_kv_heads = f[4];
    c->vocab_size = f[5];
    c->seq_len = f[6];
    if (m->version == 0) {
        header_note = " (no v1/v2 magic, so read as a legacy v0 header)";
        m->shared_classifier = f[5] > 0;
        if (f[5] < 0 && f[5] != INT32_MIN) c->vocab_size = -f[5];
    } else if (f[5] < 0) {
        die(EXIT_MODEL_MALFORMED, "%s: header field vocab_size is %d; negative only in v0 files", path, f[5]);
    }
    validate_config(path, c);
    if (m->q4 && (c->dim % Q4_GROUP != 0 || c->hidden_dim % Q4_GROUP != 0))
        die(EXIT_MODEL_MALFORMED, "%s: dim %d and hidden_dim %d must be multiples of %d for 4-bit rows (weight_type 2)",
            path, c->dim, c->hidden_dim, Q4_GROUP);

    Layout lay = {.quantized = m->quantized, .q4 = m->q4, .group_size = m->group_size};
    uint64_t expected = expected_size(m, &lay);
    if (lay.failed)
        die(EXIT_MODEL_MALFORMED, "%s: tensor %s has %s elements, not a multiple of group_size %d", path,
            lay.bad_name, fmt_count(lay.bad_count, n1), m->group_size);
    if (m->version == 3) {
        /* the weights end where the metadata starts, and the metadata ends the file */
        if (m->meta_offset != expected)
            die(EXIT_MODEL_SIZE, "%s: header field meta_offset is %s, the weights end at byte %s", path,
                fmt_count(m->meta_offset, n1), fmt_count(expected, n2));
        if (m->meta_size < 8 || m->meta_size > file_size || m->meta_offset > file_size - m->meta_size ||
            m->meta_offset + m->meta_size != file_size)
            die(EXIT_MODEL_SIZE, "%s: size %s bytes, the header implies %s (weights) + %s (meta_size)", path,
                fmt_count(file_size, n1), fmt_count(expected, n2), fmt_count(m->meta_size, n3));
        expected = file_size;
    }
    if (expected != file_size)
        die(EXIT_MODEL_SIZE, "%s: size %s bytes, the header implies %s", path, fmt_count(file_size, n1),
            fmt_count(expected, n2));
    if (expected > SIZE_MAX) die(EXIT_NO_MEMORY, "%s: %s bytes do not fit this address space", path, n2);
}

static void load_bytes(Model *m, int fd, LoadMode mode) {
    if (mode == LOAD_MMAP) {
        void *p = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            die(errno == ENOMEM ? EXIT_NO_MEMORY : EXIT_MISSING, "%s: cannot map %zu bytes: %s", m->path, m->size,
                strerror(errno));
        m->data = p;
        m->is_mapped = 1;
        return;
    }
    /* Anonymous memory that may use transparent huge pages: the weights are streamed once per token, and 2 MB
     * pages spare the TLB misses of 4 KB ones. */
    void *p = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) die(EXIT_NO_MEMORY, "%s: out of memory reading %zu bytes", m->path, m->size);
#ifdef MADV_HUGEPAGE
    madvise(p, m->size, MADV_HUGEPAGE);
#endif
    m->data = p;
    m->is_mapped = 1; /* munmap'ed like a file mapping */
    size_t done = 0;
    while (done < m->size) {
        ssize_t got = pread(fd, m->data + done, m->size - done, (off_t)done);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) die(EXIT_MISSING, "%s: read failed at byte %zu: %s", m->path, done, got < 0 ? strerror(errno) : "end of file");
        done += (size_t)got;
    }
}

/* Scales whose offset is not 4-byte aligned (a tensor with a count that is not a multiple of 4) are copied,
 * so that kernels may load them as floats. The copies go into one buffer sized on the first pass. */
typedef struct {
    Model *m;
    uint64_t offset;
    size_t copy_floats;   /* first pass: floats to copy; second pass: floats copied */
    int second_pass;
} Assigner;

static Tensor assign_tensor(Assigner *a, int rows, int cols) {
    Model *m = a->m;
    Tensor t = {.rows = rows, .cols = cols};
    uint64_t count = (uint64_t)rows * (uint64_t)cols;
    if (!m->quantized) {
        t.f = (const float *)(m->data + a->offset);
        a->offset += count * 4;
        return t;
    }
    uint64_t n_scales = count / (uint64_t)m->group_size;
    t.q = (const int8_t *)(m->data + a->offset);
    uint64_t s_at = a->offset + count;
    if (s_at % 4 == 0) {
        t.s = (const float *)(m->data + s_at);
    } else if (a->second_pass) {
        float *dst = m->aligned_scales + a->copy_floats;
        memcpy(dst, m->data + s_at, n_scales * 4);
        t.s = dst;
        a->copy_floats += n_scales;
    } else {
        a->copy_floats += n_scales;
    }
    a->offset = s_at + n_scales * 4;
    return t;
}

static const float *assign_f32(Assigner *a, uint64_t count) {
    const float *p = (const float *)(a->m->data + a->offset);
    a->offset += count * 4;
    return p;
}

/* Every offset of a 4-bit file is even (each count is a multiple of 32, each int8 tensor's scales end on a
 * multiple of 4), so the fp16 arrays can be read as uint16. */
static Tensor assign_q4(Assigner *a, int rows, int cols) {
    Tensor t = {.rows = rows, .cols = cols};
    uint64_t count = (uint64_t)rows * (uint64_t)cols;
    t.q4 = a->m->data + a->offset;
    t.d4 = (const uint16_t *)(a->m->data + a->offset + count / 2);
    t.m4 = t.d4 + count / Q4_GROUP;
    a->offset += q4_tensor_bytes(count);
    return t;
}

static void assign_matrices(Assigner *a, int first, int last) {
    const Config *c = &a->m->config;
    for (int w = first; w <= last; w++) {
        for (int l = 0; l < c->n_layers; l++) {
            int rows, cols;
            matrix_shape(c, w, &rows, &cols);
            Tensor t = a->m->q4 ? assign_q4(a, rows, cols) : assign_tensor(a, rows, cols);
            Layer *layer = &a->m->layers[l];
            Tensor *slots[7] = {&layer->wq, &layer->wk, &layer->wv, &layer->wo, &layer->w1, &layer->w2, &layer->w3};
            *slots[w] = t;
        }
    }
}

static void assign_all(Assigner *a) {
    Model *m = a->m;
    const Config *c = &m->config;
    int L = c->n_layers, dim = c->dim, V = c->vocab_size;
    if (m->version == 0) {
        a->offset = V0_HEADER_BYTES;
        m->embedding = assign_tensor(a, V, dim);
        for (int l = 0; l < L; l++) m->layers[l].rms_att = assign_f32(a, dim);
        assign_matrices(a, 0, 3);
        for (int l = 0; l < L; l++) m->layers[l].rms_ffn = assign_f32(a, dim);
        assign_matrices(a, 4, 6);
        m->rms_final = assign_f32(a, dim);
        a->offset += (uint64_t)c->seq_len * (uint64_t)(c->head_size / 2) * 2 * 4; /* freq_cis, unused */
    } else {
        a->offset = V12_HEADER_BYTES;
        for (int l = 0; l < L; l++) m->layers[l].rms_att = assign_f32(a, dim);
        for (int l = 0; l < L; l++) m->layers[l].rms_ffn = assign_f32(a, dim);
        m->rms_final = assign_f32(a, dim);
        m->embedding = assign_tensor(a, V, dim);
        assign_matrices(a, 0, 6);
    }
    m->classifier = m->shared_classifier ? m->embedding : assign_tensor(a, V, dim);
}

void build_model(Model *m, const char *path, LoadMode mode) {
    memset(m, 0, sizeof *m);
    m->path = path;
    loading_path = path;
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(EXIT_MISSING, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) die(EXIT_MISSING, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) die(EXIT_MISSING, "%s: not a regular file", path);
    read_header(m, fd, (uint64_t)st.st_size);
    m->size = (size_t)st.st_size;
    load_bytes(m, fd, mode);
    close(fd);

    m->layers = xcalloc((size_t)m->config.n_layers, sizeof(Layer), "layer table");
    Assigner a = {.m = m};
    assign_all(&a); /* first pass: count misaligned scales */
    if (a.copy_floats > 0) {
        m->aligned_scales = xmalloc(a.copy_floats * sizeof(float), "aligned scales");
        a = (Assigner){.m = m, .second_pass = 1};
        assign_all(&a);
    }
}

void release_metadata(Model *m) {
    if (!m->is_mapped || m->meta_size == 0) return;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t begin = (m->meta_offset + page - 1) / page * page, end = m->meta_offset + m->meta_size;
    if (end > begin) madvise(m->data + begin, (size_t)(end - begin), MADV_DONTNEED);
}

void free_model(Model *m) {
    if (m->data) {
        if (m->is_mapped) munmap(m->data, m->size);
        else free(m->data);
    }
    free(m->layers);
    free(m->aligned_scales);
    memset(m, 0, sizeof *m);
}
