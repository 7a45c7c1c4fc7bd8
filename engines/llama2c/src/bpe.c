/* Byte-level BPE (GPT-2 style) as llama.cpp tokenizes it, so that a converted GGUF model sees the prompt tokens
 * llama.cpp would give it:
 *   1. with `special`, the text is cut at the exact text of control and unknown tokens; user-defined tokens are
 *      cut out always (llama.cpp does both, longest token first over the whole text);
 *   2. each remaining run is decoded to code points (an invalid byte becomes U+FFFD, as llama.cpp does) and
 *      split by the pre-tokenizer: smollm first makes every \p{N} code point a piece of its own, then the GPT-2
 *      pattern 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ splits each piece;
 *   3. each piece starts as one token per byte, and the adjacent pair with the lowest merge rank (the leftmost
 *      of equal ranks) is merged until no pair has a merge. */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "tokenizer.h"
#include "unicode_table.h"

#define CP_NONE 4 /* past the end of the piece being split */

static int class_of(uint32_t cp) {
    if (cp > 0x10FFFF) return CP_OTHER;
    size_t lo = 0, hi = sizeof UNICODE_RUNS / sizeof UNICODE_RUNS[0]; /* the last run starting <= cp */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if ((UNICODE_RUNS[mid] >> 2) <= cp) lo = mid;
        else hi = mid;
    }
    return (int)(UNICODE_RUNS[lo] & 3);
}

/* ---------------------------------------------------------------------------------------------------------
 * Text as code points. `bytes` is the text re-encoded from them (only an invalid byte changes: it becomes
 * the three bytes of U+FFFD), and at[i] is where code point i starts in it (at[n] = its length). */

typedef struct {
    uint32_t *cp;
    unsigned char *cls;
    size_t *at;
    char *bytes;
    size_t n;
} CodePoints;

/* One code point from s[0..len) (len >= 1) with llama.cpp's lenient rules (overlong forms are accepted);
 * returns its byte count, or 0 when s does not start a sequence. */
static size_t decode_utf8(const unsigned char *s, size_t len, uint32_t *cp) {
    unsigned c = s[0];
    size_t need;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if ((c & 0xE0) == 0xC0) need = 2, *cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) need = 3, *cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) need = 4, *cp = c & 0x07;
    else return 0;
    if (len < need) return 0;
    for (size_t i = 1; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        *cp = *cp << 6 | (s[i] & 0x3F);
    }
    return need;
}

static size_t encode_utf8(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static void to_code_points(CodePoints *c, const char *text, size_t len) {
    c->cp = xmalloc((len + 1) * sizeof(uint32_t), "tokenizer buffer");
    c->cls = xmalloc(len + 1, "tokenizer buffer");
    c->at = xmalloc((len + 1) * sizeof(size_t), "tokenizer buffer");
    c->bytes = xmalloc(len * 3 + 1, "tokenizer buffer");
    size_t n = 0, out = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = decode_utf8((const unsigned char *)text + i, len - i, &cp);
        if (k == 0) cp = 0xFFFD, k = 1;
        c->at[n] = out;
        c->cp[n] = cp;
        c->cls[n] = (unsigned char)class_of(cp);
        n++;
        out += encode_utf8(cp, c->bytes + out);
        i += k;
    }
    c->at[n] = out;
    c->n = n;
}

static void free_code_points(CodePoints *c) {
    free(c->cp);
    free(c->cls);
    free(c->at);
    free(c->bytes);
}

/* ---------------------------------------------------------------------------------------------------------
 * Output tokens */

typedef struct {
    int *ids;
    int n, cap;
} Ids;

static void push_id(Ids *o, int id) {
    if (o->n == o->cap) {
        int cap = o->cap ? o->cap * 2 : 64;
        int *p = xmalloc((size_t)cap * sizeof(int), "prompt tokens");
        if (o->n) memcpy(p, o->ids, (size_t)o->n * sizeof(int));
        free(o->ids);
        o->ids = p;
        o->cap = cap;
    }
    o->ids[o->n++] = id;
}

/* ---------------------------------------------------------------------------------------------------------
 * Merging one piece. Symbols form a linked list; candidate pairs wait in a min-heap by (rank, left position).
 * A pair is stale once either side has changed length (symbols only grow), and is then skipped. */

typedef struct {
    int id;          /* token, or -1 for a byte without one (never merges; dropped as llama.cpp drops it) */
    int len;         /* bytes; 0 once merged into its left neighbour */
    int prev, next;  /* -1 at the ends */
} Symbol;

typedef struct {
    int rank, left, right, result;
    int left_len, right_len;
} Pair;

typedef struct {
    Pair *items;
    int n, cap;
} Heap;

static int pair_before(const Pair *a, const Pair *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(Heap *h, Pair p) {
    if (h->n == h->cap) {
        int cap = h->cap ? h->cap * 2 : 64;
        Pair *q = xmalloc((size_t)cap * sizeof(Pair), "tokenizer buffer");
        if (h->n) memcpy(q, h->items, (size_t)h->n * sizeof(Pair));
        free(h->items);
        h->items = q;
        h->cap = cap;
    }
    int i = h->n++;
    while (i > 0 && pair_before(&p, &h->items[(i - 1) / 2])) {
        h->items[i] = h->items[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->items[i] = p;
}

static Pair heap_pop(Heap *h) {
    Pair top = h->items[0], last = h->items[--h->n];
    int i = 0;
    for (;;) {
        int child = 2 * i + 1;
        if (child >= h->n) break;
        if (child + 1 < h->n && pair_before(&h->items[child + 1], &h->items[child])) child++;
        if (!pair_before(&h->items[child], &last)) break;
        h->items[i] = h->items[child];
        i = child;
    }
    if (h->n > 0) h->items[i] = last;
    return top;
}

static void consider(const Tokenizer *t, const Symbol *s, Heap *h, int left, int right) {
    if (left < 0 || right < 0) return;
    int result;
    int rank = merge_lookup(&t->merges, s[left].id, s[right].id, &result);
    if (rank < 0) return;
    heap_push(h, (Pair){rank, left, right, result, s[left].len, s[right].len});
}

typedef struct {
    Symbol *sym;
    int cap;
    Heap heap;
} MergeScratch;

static void merge_piece(const Tokenizer *t, const char *bytes, size_t len, MergeScratch *m, Ids *out) {
    if (len == 0) return;
    if ((size_t)m->cap < len) {
        free(m->sym);
        m->sym = xmalloc(len * sizeof(Symbol), "tokenizer buffer");
        m->cap = (int)len;
    }
    Symbol *s = m->sym;
    int n = (int)len;
    for (int i = 0; i < n; i++)
        s[i] = (Symbol){t->byte_token[(unsigned char)bytes[i]], 1, i - 1, i + 1 < n ? i + 1 : -1};
    m->heap.n = 0;
    for (int i = 0; i + 1 < n; i++) consider(t, s, &m->heap, i, i + 1);
    while (m->heap.n > 0) {
        Pair p = heap_pop(&m->heap);
        Symbol *l = &s[p.left], *r = &s[p.right];
        if (l->len != p.left_len || r->len != p.right_len || l->len == 0 || r->len == 0) continue;
        l->id = p.result;
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) s[r->next].prev = p.left;
        consider(t, s, &m->heap, l->prev, p.left);
        consider(t, s, &m->heap, p.left, l->next);
    }
    for (int i = 0; i >= 0; i = s[i].next)
        if (s[i].id >= 0) push_id(out, s[i].id);
}

/* ---------------------------------------------------------------------------------------------------------
 * Pre-tokenizer: the GPT-2 pattern over code points [begin, end) */

typedef struct {
    const Tokenizer *t;
    const CodePoints *c;
    MergeScratch *scratch;
    Ids *out;
} Splitter;

static void emit(Splitter *sp, size_t begin, size_t end) {
    if (end > begin) merge_piece(sp->t, sp->c->bytes + sp->c->at[begin], sp->c->at[end] - sp->c->at[begin],
                                 sp->scratch, sp->out);
}

static void split_gpt2(Splitter *sp, size_t begin, size_t end) {
    const uint32_t *cp = sp->c->cp;
    const unsigned char *cls = sp->c->cls;
#define CLASS_AT(i) ((i) < end ? cls[i] : CP_NONE)
    size_t pos = begin;
    while (pos < end) {
        uint32_t c = cp[pos];
        if (c == '\'' && pos + 1 < end) { /* 's 't 'm 'd 're 've 'll (lower case only, as GPT-2) */
            uint32_t a = cp[pos + 1];
            if (a == 's' || a == 't' || a == 'm' || a == 'd') {
                emit(sp, pos, pos + 2);
                pos += 2;
                continue;
            }
            if (pos + 2 < end) {
                uint32_t b = cp[pos + 2];
                if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
                    emit(sp, pos, pos + 3);
                    pos += 3;
                    continue;
                }
            }
        }
        int space = c == ' ';
        int k = CLASS_AT(pos + (size_t)space);
        if (k == CP_LETTER || k == CP_NUMBER || k == CP_OTHER) { /* ' ?' then a run of one class */
            size_t stop = pos + (size_t)space;
            while (CLASS_AT(stop) == k) stop++;
            emit(sp, pos, stop);
            pos = stop;
            continue;
        }
        size_t spaces = 0;
        while (CLASS_AT(pos + spaces) == CP_SPACE) spaces++;
        if (spaces > 1 && pos + spaces < end) { /* \s+(?!\S): leave the last space to the next piece */
            emit(sp, pos, pos + spaces - 1);
            pos += spaces - 1;
        } else if (spaces > 0) {
            emit(sp, pos, pos + spaces);
            pos += spaces;
        } else { /* unreachable: every code point has a class */
            emit(sp, pos, pos + 1);
            pos++;
        }
    }
#undef CLASS_AT
}

static void pre_tokenize(Splitter *sp, size_t begin, size_t end) {
    const unsigned char *cls = sp->c->cls;
    switch (sp->t->pre_tokenizer) {
    case PRE_NONE:
        emit(sp, begin, end);
        break;
    case PRE_GPT2:
        split_gpt2(sp, begin, end);
        break;
    default: { /* smollm: every number on its own, then GPT-2 on the runs between */
        size_t run = begin;
        for (size_t i = begin; i < end; i++) {
            if (cls[i] != CP_NUMBER) continue;
            split_gpt2(sp, run, i);
            split_gpt2(sp, i, i + 1);
            run = i + 1;
        }
        split_gpt2(sp, run, end);
    }
    }
}

static void encode_text(const Tokenizer *t, const char *text, size_t len, MergeScratch *scratch, Ids *out) {
    if (len == 0) return;
    CodePoints c;
    to_code_points(&c, text, len);
    Splitter sp = {t, &c, scratch, out};
    pre_tokenize(&sp, 0, c.n);
    free_code_points(&c);
}

/* ---------------------------------------------------------------------------------------------------------
 * Special tokens: fragments of text or single tokens, cut one special token at a time, longest first. */

typedef struct {
    size_t begin, len;
    int token; /* -1: text[begin, begin+len) */
} Fragment;

typedef struct {
    Fragment *f;
    int n, cap;
} Fragments;

static void push_fragment(Fragments *fs, Fragment f) {
    if (fs->n == fs->cap) {
        int cap = fs->cap ? fs->cap * 2 : 16;
        Fragment *p = xmalloc((size_t)cap * sizeof(Fragment), "tokenizer buffer");
        if (fs->n) memcpy(p, fs->f, (size_t)fs->n * sizeof(Fragment));
        free(fs->f);
        fs->f = p;
        fs->cap = cap;
    }
    fs->f[fs->n++] = f;
}

static const char *find_bytes(const char *hay, size_t n, const char *needle, size_t k) {
    if (k == 0 || k > n) return NULL;
    for (size_t i = 0; i + k <= n; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

static Fragments cut_specials(const Tokenizer *t, const char *text, size_t len, int special) {
    Fragments cur = {0}, next = {0};
    push_fragment(&cur, (Fragment){0, len, -1});
    for (int s = 0; s < t->n_specials; s++) {
        int id = t->specials[s];
        if (!special && t->type[id] != TOKEN_USER_DEFINED) continue; /* control and unknown only with special */
        const char *tok = t->bytes + t->offset[id];
        size_t k = t->length[id];
        next.n = 0;
        for (int i = 0; i < cur.n; i++) {
            Fragment f = cur.f[i];
            if (f.token >= 0) {
                push_fragment(&next, f);
                continue;
            }
            const char *at;
            while ((at = find_bytes(text + f.begin, f.len, tok, k)) != NULL) {
                size_t left = (size_t)(at - (text + f.begin));
                if (left > 0) push_fragment(&next, (Fragment){f.begin, left, -1});
                push_fragment(&next, (Fragment){0, 0, id});
                f.begin += left + k;
                f.len -= left + k;
            }
            if (f.len > 0) push_fragment(&next, f);
        }
        Fragments swap = cur;
        cur = next;
        next = swap;
    }
    free(next.f);
    return cur;
}

int *bpe_encode(const Tokenizer *t, const char *text, size_t len, int bos, int special, int *n) {
    Ids out = {0};
    if (bos && t->add_bos && t->bos_id >= 0) push_id(&out, t->bos_id);
    MergeScratch scratch = {0};
    Fragments fs = cut_specials(t, text, len, special);
    for (int i = 0; i < fs.n; i++) {
        if (fs.f[i].token >= 0) push_id(&out, fs.f[i].token);
        else encode_text(t, text + fs.f[i].begin, fs.f[i].len, &scratch, &out);
    }
    free(fs.f);
    free(scratch.sym);
    free(scratch.heap.items);
    if (!out.ids) out.ids = xmalloc(sizeof(int), "prompt tokens");
    *n = out.n;
    return out.ids;
}

/* ---------------------------------------------------------------------------------------------------------
 * Set-up */

static const Tokenizer *sort_target; /* qsort has no context argument in C11 */

static int longer_first(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    unsigned lx = sort_target->length[x], ly = sort_target->length[y];
    if (lx != ly) return lx > ly ? -1 : 1;
    return (x > y) - (x < y);
}

void bpe_prepare(Tokenizer *t) {
    /* The single-byte tokens; when a byte has several, the last one, as llama.cpp's text-to-token map. */
    for (int b = 0; b < 256; b++) t->byte_token[b] = -1;
    t->specials = xmalloc((size_t)t->vocab_size * sizeof(int), "special tokens");
    t->n_specials = 0;
    for (int i = 0; i < t->vocab_size; i++) {
        int type = t->type[i];
        if (type == TOKEN_CONTROL || type == TOKEN_UNKNOWN || type == TOKEN_USER_DEFINED) {
            if (t->length[i] > 0) t->specials[t->n_specials++] = i;
            continue;
        }
        if (t->length[i] == 1) t->byte_token[(unsigned char)t->bytes[t->offset[i]]] = i;
    }
    sort_target = t;
    qsort(t->specials, (size_t)t->n_specials, sizeof(int), longer_first);
}
