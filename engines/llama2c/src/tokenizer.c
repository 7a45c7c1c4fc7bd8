#include "tokenizer.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"

#define MAX_TOKEN_LENGTH_LIMIT 65536

static int is_printable_piece(const char *piece);
static int lookup(const Tokenizer *t, const char *str);
static const char *piece_of(const Tokenizer *t, int id) { return t->bytes + t->offset[id]; }

static const Tokenizer *sort_target; /* qsort has no context argument in C11 */

/* By string, then by id, so that a lookup finds the lowest id of a piece that occurs twice. */
static int compare_ids(const void *a, const void *b) {
    const Tokenizer *t = sort_target;
    int x = *(const int *)a, y = *(const int *)b;
    int c = strcmp(t->bytes + t->offset[x], t->bytes + t->offset[y]);
    return c != 0 ? c : (x > y) - (x < y);
}

static int32_t read_le32(const unsigned char *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

/* The whole file in memory: the largest real tokenizer is under 1 MB. */
static unsigned char *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) die(EXIT_MISSING, "%s: cannot open tokenizer: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode))
        die(EXIT_MISSING, "%s: tokenizer is not a readable regular file", path);
    if ((uint64_t)st.st_size > (uint64_t)1 << 30)
        die(EXIT_TOKENIZER_BAD, "%s: tokenizer is %lld bytes, more than any vocabulary needs", path,
            (long long)st.st_size);
    *size = (size_t)st.st_size;
    unsigned char *buf = xmalloc(*size, "tokenizer");
    if (fread(buf, 1, *size, f) != *size) die(EXIT_MISSING, "%s: cannot read tokenizer: %s", path, strerror(errno));
    fclose(f);
    return buf;
}

/* The lookup table and byte pieces, once the tokens are loaded. */
static void finish_sentencepiece(Tokenizer *t) {
    sort_target = t;
    qsort(t->sorted, (size_t)t->vocab_size, sizeof(int), compare_ids);
    for (int i = 0; i < 256; i++) {
        t->byte_pieces[2 * i] = (char)i;
        t->byte_pieces[2 * i + 1] = '\0';
    }
}

void build_tokenizer(Tokenizer *t, const char *path, int vocab_size) {
    memset(t, 0, sizeof *t);
    loading_path = path;
    size_t size;
    unsigned char *buf = slurp(path, &size);
    if (size < 4) die(EXIT_TOKENIZER_BAD, "%s: tokenizer truncated: %zu bytes, no max_token_length", path, size);
    int max_len = read_le32(buf);
    if (max_len < 1 || max_len > MAX_TOKEN_LENGTH_LIMIT)
        die(EXIT_TOKENIZER_BAD, "%s: max_token_length is %d, expected 1..%d", path, max_len, MAX_TOKEN_LENGTH_LIMIT);
    /* First pass: check vocab_size records without trusting any length. */
    size_t at = 4, text_bytes = 0;
    for (int i = 0; i < vocab_size; i++) {
        if (at == size)
            die(EXIT_VOCAB_MISMATCH, "%s: tokenizer has %d tokens, the checkpoint's vocab_size is %d", path, i,
                vocab_size);
        if (size - at < 8)
            die(EXIT_TOKENIZER_BAD, "%s: tokenizer truncated in token %d (byte %zu of %zu)", path, i, at, size);
        int len = read_le32(buf + at + 4);
        if (len < 0 || len > max_len)
            die(EXIT_TOKENIZER_BAD, "%s: token %d has byte length %d, expected 0..%d (max_token_length)", path, i,
                len, max_len);
        if (size - at - 8 < (size_t)len)
            die(EXIT_TOKENIZER_BAD, "%s: tokenizer truncated in token %d (needs %d bytes at byte %zu of %zu)", path,
                i, len, at + 8, size);
        at += 8 + (size_t)len;
        text_bytes += (size_t)len + 1;
    }
    if (at != size)
        die(EXIT_VOCAB_MISMATCH, "%s: %zu bytes follow token %d: the tokenizer has more tokens than the checkpoint's "
            "vocab_size %d", path, size - at, vocab_size - 1, vocab_size);
    if (text_bytes > UINT32_MAX) die(EXIT_TOKENIZER_BAD, "%s: tokenizer strings too large", path);

    t->kind = TOKENIZER_SENTENCEPIECE;
    t->vocab_size = vocab_size;
    t->max_token_length = max_len;
    t->bytes = xmalloc(text_bytes, "tokenizer strings");
    t->offset = xmalloc((size_t)vocab_size * sizeof(unsigned), "tokenizer");
    t->length = xmalloc((size_t)vocab_size * sizeof(unsigned), "tokenizer");
    t->scores = xmalloc((size_t)vocab_size * sizeof(float), "tokenizer");
    t->sorted = xmalloc((size_t)vocab_size * sizeof(int), "tokenizer");
    at = 4;
    size_t out = 0;
    for (int i = 0; i < vocab_size; i++) {
        memcpy(&t->scores[i], buf + at, 4);
        int len = read_le32(buf + at + 4);
        t->offset[i] = (unsigned)out;
        memcpy(t->bytes + out, buf + at + 8, (size_t)len);
        t->bytes[out + (size_t)len] = '\0';
        t->length[i] = (unsigned)strlen(t->bytes + out); /* a piece ends at its first NUL, as in llama2.c */
        out += (size_t)len + 1;
        at += 8 + (size_t)len;
        t->sorted[i] = i;
    }
    free(buf);
    t->bos_id = 1;
    t->eos_id = 2;
    t->add_bos = 1;
    for (int i = 0; i < 256; i++) t->byte_token[i] = i + 3 < vocab_size ? i + 3 : -1;
    finish_sentencepiece(t);
    loading_path = NULL;
}

void free_tokenizer(Tokenizer *t) {
    free(t->bytes);
    free(t->offset);
    free(t->length);
    free(t->scores);
    free(t->sorted);
    free(t->type);
    free(t->end_ids);
    free(t->chat_template);
    free(t->specials);
    free(t->merges.keys);
    free(t->merges.rank);
    free(t->merges.result);
    memset(t, 0, sizeof *t);
}


/* The id of the token spelled `str`, or -1. */
/* ---------------------------------------------------------------------------------------------------------
 * The v3 metadata block. Every count is bounded and every read checked against the block's end first. */

#define META_MAGIC 0x6b746273u /* "sbtk" */
#define META_MAX_TOKENS 1000000
#define META_MAX_TOKEN_BYTES 512
#define META_MAX_MERGES 2000000
#define META_MAX_END_IDS 1024
#define META_MAX_TEMPLATE 65536

typedef struct {
    const uint8_t *p;
    uint64_t at, size;
    const char *path;
} Reader;

static _Noreturn void meta_die(const Reader *r, const char *what) {
    die(EXIT_TOKENIZER_BAD, "%s: metadata block malformed: %s (at byte %llu of %llu)", r->path, what,
        (unsigned long long)r->at, (unsigned long long)r->size);
}

static void need_bytes(Reader *r, uint64_t n, const char *what) {
    if (r->size - r->at < n) {
        char msg[160];
        snprintf(msg, sizeof msg, "truncated in %s", what);
        meta_die(r, msg);
    }
}

static uint32_t get_u32(Reader *r, const char *what) {
    need_bytes(r, 4, what);
    const uint8_t *q = r->p + r->at;
    r->at += 4;
    return (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
}

/* A token id in [-1 or 0, vocab) */
static int get_id(Reader *r, const char *what, int vocab, int allow_none) {
    int32_t v = (int32_t)get_u32(r, what);
    if (v < (allow_none ? -1 : 0) || v >= vocab) {
        char msg[200];
        r->at -= 4;
        snprintf(msg, sizeof msg, "%s is %d, expected %s0..%d", what, v, allow_none ? "-1 or " : "", vocab - 1);
        meta_die(r, msg);
    }
    return v;
}

static void read_tokens(Tokenizer *t, Reader *r, int n) {
    /* first pass: the sizes, so the strings go into one allocation */
    uint64_t start = r->at, text_bytes = 0;
    for (int i = 0; i < n; i++) {
        need_bytes(r, 7, "a token record");
        unsigned type = r->p[r->at];
        if (type > TOKEN_BYTE) {
            char msg[96];
            snprintf(msg, sizeof msg, "token %d has type %u, expected 0..6", i, type);
            meta_die(r, msg);
        }
        unsigned len = (unsigned)r->p[r->at + 5] | (unsigned)r->p[r->at + 6] << 8;
        if (len > META_MAX_TOKEN_BYTES) {
            char msg[96];
            snprintf(msg, sizeof msg, "token %d has %u bytes, at most %d", i, len, META_MAX_TOKEN_BYTES);
            meta_die(r, msg);
        }
        r->at += 7;
        need_bytes(r, len, "a token's bytes");
        r->at += len;
        text_bytes += len + 1;
    }
    t->bytes = xmalloc((size_t)text_bytes, "tokenizer strings");
    t->offset = xmalloc((size_t)n * sizeof(unsigned), "tokenizer");
    t->length = xmalloc((size_t)n * sizeof(unsigned), "tokenizer");
    t->scores = xmalloc((size_t)n * sizeof(float), "tokenizer");
    t->type = xmalloc((size_t)n, "tokenizer");
    t->sorted = xmalloc((size_t)n * sizeof(int), "tokenizer");
    r->at = start;
    size_t out = 0;
    for (int i = 0; i < n; i++) {
        const uint8_t *q = r->p + r->at;
        unsigned len = (unsigned)q[5] | (unsigned)q[6] << 8;
        t->type[i] = q[0];
        memcpy(&t->scores[i], q + 1, 4);
        t->offset[i] = (unsigned)out;
        t->length[i] = len;
        memcpy(t->bytes + out, q + 7, len);
        t->bytes[out + len] = '\0';
        out += len + 1;
        if ((int)len > t->max_token_length) t->max_token_length = (int)len;
        t->sorted[i] = i;
        r->at += 7 + len;
    }
    if (t->max_token_length < 1) t->max_token_length = 1;
}

static void merge_map_init(MergeMap *m, uint32_t n_merges) {
    uint32_t cap = 16;
    while (cap < 2 * n_merges) cap *= 2;
    m->mask = cap - 1;
    m->keys = xmalloc((size_t)cap * sizeof(uint64_t), "BPE merges");
    m->rank = xmalloc((size_t)cap * sizeof(int32_t), "BPE merges");
    m->result = xmalloc((size_t)cap * sizeof(int32_t), "BPE merges");
    memset(m->keys, 0xff, (size_t)cap * sizeof(uint64_t));
}

static uint32_t merge_hash(uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return (uint32_t)key;
}

#define MERGE_EMPTY UINT64_MAX

/* Keeps the first (lowest-rank) merge of a pair. */
static void merge_insert(MergeMap *m, int left, int right, int rank, int result) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (uint32_t i = merge_hash(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == key) return;
        if (m->keys[i] == MERGE_EMPTY) {
            m->keys[i] = key;
            m->rank[i] = rank;
            m->result[i] = result;
            return;
        }
    }
}

int merge_lookup(const MergeMap *m, int left, int right, int *result) {
    if (!m->keys || left < 0 || right < 0) return -1;
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (uint32_t i = merge_hash(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == key) {
            *result = m->result[i];
            return m->rank[i];
        }
        if (m->keys[i] == MERGE_EMPTY) return -1;
    }
}

static void read_merges(Tokenizer *t, Reader *r) {
    uint32_t n = get_u32(r, "n_merges");
    if (n > META_MAX_MERGES) {
        char msg[96];
        snprintf(msg, sizeof msg, "n_merges is %u, at most %d", n, META_MAX_MERGES);
        meta_die(r, msg);
    }
    need_bytes(r, (uint64_t)n * 12, "the merges");
    merge_map_init(&t->merges, n);
    for (uint32_t i = 0; i < n; i++) {
        char what[64];
        snprintf(what, sizeof what, "merge %u's left id", i);
        int left = get_id(r, what, t->vocab_size, 0);
        snprintf(what, sizeof what, "merge %u's right id", i);
        int right = get_id(r, what, t->vocab_size, 0);
        snprintf(what, sizeof what, "merge %u's result id", i);
        int result = get_id(r, what, t->vocab_size, 0);
        unsigned ll = t->length[left], lr = t->length[right];
        if (t->length[result] != ll + lr || memcmp(t->bytes + t->offset[result], t->bytes + t->offset[left], ll) != 0 ||
            memcmp(t->bytes + t->offset[result] + ll, t->bytes + t->offset[right], lr) != 0) {
            char msg[160];
            r->at -= 12;
            snprintf(msg, sizeof msg, "merge %u: token %d is not token %d followed by token %d", i, result, left,
                     right);
            meta_die(r, msg);
        }
        merge_insert(&t->merges, left, right, (int)i, result);
    }
}

void build_tokenizer_v3(Tokenizer *t, const char *path, const uint8_t *data, uint64_t size, int vocab_size) {
    memset(t, 0, sizeof *t);
    loading_path = path;
    t->from_metadata = 1;
    Reader r = {.p = data, .at = 0, .size = size, .path = path};
    if (get_u32(&r, "magic") != META_MAGIC) {
        r.at = 0;
        meta_die(&r, "no magic \"sbtk\"");
    }
    uint32_t version = get_u32(&r, "version");
    if (version != 1) {
        char msg[64];
        r.at -= 4;
        snprintf(msg, sizeof msg, "version %u, expected 1", version);
        meta_die(&r, msg);
    }
    uint32_t kind = get_u32(&r, "tokenizer_kind");
    if (kind != TOKENIZER_SENTENCEPIECE && kind != TOKENIZER_BPE) {
        char msg[96];
        r.at -= 4;
        snprintf(msg, sizeof msg, "tokenizer_kind %u, expected 1 (sentencepiece) or 2 (byte-level BPE)", kind);
        meta_die(&r, msg);
    }
    t->kind = (int)kind;
    uint32_t pre = get_u32(&r, "pre_tokenizer");
    if (pre > PRE_SMOLLM) {
        char msg[96];
        r.at -= 4;
        snprintf(msg, sizeof msg, "pre_tokenizer %u, expected 0 (none), 1 (gpt2) or 2 (smollm)", pre);
        meta_die(&r, msg);
    }
    t->pre_tokenizer = (int)pre;
    int32_t bos = (int32_t)get_u32(&r, "bos_id"), eos = (int32_t)get_u32(&r, "eos_id");
    need_bytes(&r, 4, "add_bos");
    if (data[r.at] > 1) meta_die(&r, "add_bos is neither 0 nor 1");
    t->add_bos = data[r.at];
    r.at += 4;
    uint32_t n_tokens = get_u32(&r, "n_tokens");
    if (n_tokens > META_MAX_TOKENS) {
        char msg[96];
        r.at -= 4;
        snprintf(msg, sizeof msg, "n_tokens is %u, at most %d", n_tokens, META_MAX_TOKENS);
        meta_die(&r, msg);
    }
    if ((int)n_tokens != vocab_size)
        die(EXIT_VOCAB_MISMATCH, "%s: the metadata block has %u tokens, the header's vocab_size is %d", path,
            n_tokens, vocab_size);
    t->vocab_size = vocab_size;
    if (bos < -1 || bos >= vocab_size || eos < -1 || eos >= vocab_size) {
        char msg[128];
        r.at = 16;
        snprintf(msg, sizeof msg, "bos_id %d / eos_id %d, expected -1 or 0..%d", bos, eos, vocab_size - 1);
        meta_die(&r, msg);
    }
    if (t->add_bos && bos < 0) meta_die(&r, "add_bos is 1 but bos_id is -1");
    t->bos_id = bos;
    t->eos_id = eos;
    read_tokens(t, &r, vocab_size);
    if (t->kind == TOKENIZER_BPE) {
        read_merges(t, &r);
    } else {
        uint32_t n = get_u32(&r, "n_merges");
        if (n != 0) meta_die(&r, "the sentencepiece kind merges by score; n_merges must be 0");
    }
    uint32_t n_end = get_u32(&r, "n_end_ids");
    if (n_end > META_MAX_END_IDS) {
        char msg[96];
        r.at -= 4;
        snprintf(msg, sizeof msg, "n_end_ids is %u, at most %d", n_end, META_MAX_END_IDS);
        meta_die(&r, msg);
    }
    t->end_ids = xmalloc((size_t)(n_end ? n_end : 1) * sizeof(int), "end ids");
    for (uint32_t i = 0; i < n_end; i++) t->end_ids[i] = get_id(&r, "an end id", vocab_size, 0);
    t->n_end_ids = (int)n_end;
    uint32_t n_template = get_u32(&r, "n_template");
    if (n_template > META_MAX_TEMPLATE) {
        char msg[96];
        r.at -= 4;
        snprintf(msg, sizeof msg, "n_template is %u, at most %d", n_template, META_MAX_TEMPLATE);
        meta_die(&r, msg);
    }
    need_bytes(&r, n_template, "the chat template");
    t->chat_template = xmalloc(n_template + 1, "chat template");
    memcpy(t->chat_template, data + r.at, n_template);
    t->chat_template[n_template] = '\0';
    r.at += n_template;
    if (r.at != size) meta_die(&r, "bytes follow the chat template");

    if (t->kind == TOKENIZER_BPE) {
        bpe_prepare(t);
    } else {
        for (int i = 0; i < 256; i++) t->byte_token[i] = -1;
        finish_sentencepiece(t);
        for (int i = 0; i < 256; i++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", i);
            t->byte_token[i] = lookup(t, name);
        }
    }
    loading_path = NULL;
}

static int lookup(const Tokenizer *t, const char *str) {
    int lo = 0, hi = t->vocab_size; /* the first entry >= str */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (strcmp(piece_of(t, t->sorted[mid]), str) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < t->vocab_size && strcmp(piece_of(t, t->sorted[lo]), str) == 0 ? t->sorted[lo] : -1;
}

/* The id of the merge of tokens a and b, or -1; `buf` has room for two tokens. */
static int merged(const Tokenizer *t, int a, int b, char *buf) {
    size_t la = strlen(piece_of(t, a)), lb = strlen(piece_of(t, b));
    memcpy(buf, piece_of(t, a), la);
    memcpy(buf + la, piece_of(t, b), lb + 1);
    return lookup(t, buf);
}

static int sentencepiece_encode(const Tokenizer *t, const char *text, int bos, int *tokens) {
    char *buf = xmalloc((size_t)t->max_token_length * 2 + 8, "tokenizer buffer");
    int n = 0;
    if (bos && t->add_bos && t->bos_id >= 0) tokens[n++] = t->bos_id;
    if (text[0] != '\0') {
        int space = lookup(t, " ");
        if (space >= 0) tokens[n++] = space;
    }
    /* One token per UTF-8 character, or its bytes as <0xHH> tokens when the vocabulary lacks it. */
    for (const char *c = text; *c != '\0';) {
        size_t len = 1;
        while (len < 4 && (c[len] & 0xC0) == 0x80) len++;
        char ch[5];
        memcpy(ch, c, len);
        ch[len] = '\0';
        int id = lookup(t, ch);
        if (id >= 0) {
            tokens[n++] = id;
        } else {
            for (size_t i = 0; i < len; i++)
                if (t->byte_token[(unsigned char)ch[i]] >= 0) tokens[n++] = t->byte_token[(unsigned char)ch[i]];
        }
        c += len;
    }
    /* Greedy merges: the pair whose merge scores highest (the leftmost on ties), until none merges. The
     * score of every adjacent pair is cached and only the two pairs next to a merge are looked up again. */
    if (n > 1) {
        int *pair_id = xmalloc((size_t)n * sizeof(int), "tokenizer buffer"); /* merge of (i, i+1), or -1 */
        for (int i = 0; i + 1 < n; i++) pair_id[i] = merged(t, tokens[i], tokens[i + 1], buf);
        for (;;) {
            int best = -1;
            float best_score = -1e10f;
            for (int i = 0; i + 1 < n; i++) {
                if (pair_id[i] >= 0 && t->scores[pair_id[i]] > best_score) {
                    best_score = t->scores[pair_id[i]];
                    best = i;
                }
            }
            if (best < 0) break;
            tokens[best] = pair_id[best];
            memmove(tokens + best + 1, tokens + best + 2, (size_t)(n - best - 2) * sizeof(int));
            memmove(pair_id + best + 1, pair_id + best + 2, (size_t)(n - best - 2) * sizeof(int));
            n--;
            if (best > 0) pair_id[best - 1] = merged(t, tokens[best - 1], tokens[best], buf);
            pair_id[best] = best + 1 < n ? merged(t, tokens[best], tokens[best + 1], buf) : -1;
        }
        free(pair_id);
    }
    free(buf);
    return n;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int *encode(const Tokenizer *t, const char *text, size_t len, int bos, int special, int *n) {
    if (t->kind == TOKENIZER_BPE) return bpe_encode(t, text, len, bos, special, n);
    char *copy = xmalloc(len + 1, "prompt"); /* llama2.c's encoder reads a C string */
    memcpy(copy, text, len);
    copy[len] = '\0';
    int *tokens = xmalloc((strlen(copy) + 3) * sizeof(int), "prompt tokens");
    *n = sentencepiece_encode(t, copy, bos, tokens);
    free(copy);
    return tokens;
}

const char *decode(const Tokenizer *t, int prev, int token, size_t *len) {
    const char *piece = piece_of(t, token);
    if (t->kind == TOKENIZER_BPE) {
        *len = t->length[token];
        return piece;
    }
    if (prev == t->bos_id && piece[0] == ' ') piece++;
    /* <0xH> or <0xHH> at the start (what llama2.c's sscanf "<0x%02hhX>" accepts): a raw byte */
    if (piece[0] == '<' && piece[1] == '0' && piece[2] == 'x' && hex_value(piece[3]) >= 0) {
        int value = hex_value(piece[3]);
        if (hex_value(piece[4]) >= 0) value = value * 16 + hex_value(piece[4]);
        *len = value != 0; /* a NUL byte shows as nothing, as with a C string */
        return t->byte_pieces + 2 * value;
    }
    *len = strlen(piece);
    return piece;
}

int is_shown(const Tokenizer *t, int token, const char *piece, size_t len) {
    if (t->kind == TOKENIZER_BPE) return len > 0 && !(t->type && t->type[token] == TOKEN_CONTROL);
    return is_printable_piece(piece);
}

int is_end_token(const Tokenizer *t, int token) {
    if (t->kind == TOKENIZER_SENTENCEPIECE && (token == t->bos_id || token == t->eos_id)) return 1;
    for (int i = 0; i < t->n_end_ids; i++)
        if (t->end_ids[i] == token) return 1;
    return 0;
}

static int is_printable_piece(const char *piece) {
    if (piece[0] == '\0') return 0;
    if (piece[1] != '\0') return 1;
    unsigned char b = (unsigned char)piece[0];
    return (b >= 0x20 && b < 0x7f) || b == ' ' || (b >= '\t' && b <= '\r');
}
