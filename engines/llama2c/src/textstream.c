#include "textstream.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

void buf_append(Buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = xmalloc(cap, "text buffer");
        if (b->len) memcpy(p, b->data, b->len);
        free(b->data);
        b->data = p;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void buf_free(Buf *b) {
    free(b->data);
    *b = (Buf){0};
}

static const char REPLACEMENT[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* Bytes a character starting with `lead` has, or 0 when `lead` cannot start one. */
static size_t char_length(unsigned char lead) {
    if (lead < 0x80) return 1;
    if (lead >= 0xC2 && lead <= 0xDF) return 2;
    if (lead >= 0xE0 && lead <= 0xEF) return 3;
    if (lead >= 0xF0 && lead <= 0xF4) return 4;
    return 0;
}

/* Whether s[0..n) (n < the full length) can still grow into a valid character. */
static int valid_prefix(const unsigned char *s, size_t n) {
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (n >= 2) { /* the second byte's range rules out overlongs, surrogates and > U+10FFFF */
        unsigned a = s[0], b = s[1];
        if (a == 0xE0 && b < 0xA0) return 0;
        if (a == 0xED && b > 0x9F) return 0;
        if (a == 0xF0 && b < 0x90) return 0;
        if (a == 0xF4 && b > 0x8F) return 0;
    }
    return 1;
}

void utf8_feed(Utf8Stream *u, const char *bytes, size_t n, Buf *out) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)bytes[i];
        if (u->n_pending > 0) {
            u->pending[u->n_pending++] = c;
            size_t need = char_length(u->pending[0]);
            if (!valid_prefix(u->pending, u->n_pending)) {
                /* the pending start was invalid; retry the byte on its own */
                buf_append(out, REPLACEMENT, 3);
                u->n_pending = 0;
                i--;
                continue;
            }
            if (u->n_pending == need) {
                buf_append(out, (const char *)u->pending, need);
                u->n_pending = 0;
            }
            continue;
        }
        size_t need = char_length(c);
        if (need == 0) buf_append(out, REPLACEMENT, 3);
        else if (need == 1) buf_append(out, (const char *)&c, 1);
        else u->pending[u->n_pending++] = c;
    }
}

void utf8_flush(Utf8Stream *u, Buf *out) {
    if (u->n_pending > 0) buf_append(out, REPLACEMENT, 3);
    u->n_pending = 0;
}

void stop_init(StopMatcher *m) { memset(m, 0, sizeof *m); }

void stop_add(StopMatcher *m, const char *s, size_t len) {
    if (len == 0 || m->n_stops == MAX_STOPS) return;
    m->stops[m->n_stops] = s;
    m->stop_len[m->n_stops++] = len;
}

static const char *find(const char *hay, size_t n, const char *needle, size_t k) {
    if (k > n) return NULL;
    for (size_t i = 0; i + k <= n; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

void stop_feed(StopMatcher *m, const char *text, size_t n, Buf *out) {
    if (m->is_stopped) return;
    buf_append(&m->held, text, n);
    const char *all = m->held.data;
    size_t len = m->held.len;
    const char *cut = NULL;
    for (int s = 0; s < m->n_stops; s++) {
        const char *at = find(all, len, m->stops[s], m->stop_len[s]);
        if (at && (!cut || at < cut)) cut = at;
    }
    if (cut) {
        m->is_stopped = 1;
        buf_append(out, all, (size_t)(cut - all));
        m->held.len = 0;
        return;
    }
    /* hold back the longest tail that is a proper prefix of a stop string */
    size_t keep = 0;
    for (int s = 0; s < m->n_stops; s++) {
        size_t max = m->stop_len[s] - 1 < len ? m->stop_len[s] - 1 : len;
        for (size_t k = max; k > keep; k--) {
            if (memcmp(all + len - k, m->stops[s], k) == 0) {
                keep = k;
                break;
            }
        }
    }
    buf_append(out, all, len - keep);
    memmove(m->held.data, all + len - keep, keep);
    m->held.len = keep;
}

void stop_flush(StopMatcher *m, Buf *out) {
    if (!m->is_stopped && m->held.len) buf_append(out, m->held.data, m->held.len);
    m->held.len = 0;
}

void stop_free(StopMatcher *m) { buf_free(&m->held); }
