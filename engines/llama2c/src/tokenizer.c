#include "tokenizer.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"

#define MAX_TOKEN_LENGTH_LIMIT 65536

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

    t->vocab_size = vocab_size;
    t->max_token_length = max_len;
    t->bytes = xmalloc(text_bytes, "tokenizer strings");
    t->offset = xmalloc((size_t)vocab_size * sizeof(unsigned), "tokenizer");
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
        out += (size_t)len + 1;
        at += 8 + (size_t)len;
        t->sorted[i] = i;
    }
    free(buf);
    sort_target = t;
    qsort(t->sorted, (size_t)vocab_size, sizeof(int), compare_ids);
    for (int i = 0; i < 256; i++) {
        t->byte_pieces[2 * i] = (char)i;
        t->byte_pieces[2 * i + 1] = '\0';
    }
    loading_path = NULL;
}

void free_tokenizer(Tokenizer *t) {
    free(t->bytes);
    free(t->offset);
    free(t->scores);
    free(t->sorted);
    memset(t, 0, sizeof *t);
}

static const char *piece_of(const Tokenizer *t, int id) { return t->bytes + t->offset[id]; }

/* The id of the token spelled `str`, or -1. */
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

int encode(const Tokenizer *t, const char *text, int bos, int *tokens) {
    char *buf = xmalloc((size_t)t->max_token_length * 2 + 8, "tokenizer buffer");
    int n = 0;
    if (bos) tokens[n++] = 1;
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
            for (size_t i = 0; i < len; i++) tokens[n++] = (unsigned char)ch[i] + 3;
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

const char *decode(const Tokenizer *t, int prev, int token) {
    const char *piece = piece_of(t, token);
    if (prev == 1 && piece[0] == ' ') piece++;
    /* <0xH> or <0xHH> at the start (what llama2.c's sscanf "<0x%02hhX>" accepts): a raw byte */
    if (piece[0] == '<' && piece[1] == '0' && piece[2] == 'x' && hex_value(piece[3]) >= 0) {
        int value = hex_value(piece[3]);
        if (hex_value(piece[4]) >= 0) value = value * 16 + hex_value(piece[4]);
        return t->byte_pieces + 2 * value;
    }
    return piece;
}

int is_printable_piece(const char *piece) {
    if (piece[0] == '\0') return 0;
    if (piece[1] != '\0') return 1;
    unsigned char b = (unsigned char)piece[0];
    return (b >= 0x20 && b < 0x7f) || b == ' ' || (b >= '\t' && b <= '\r');
}
