/* Streaming text for token frames: whole UTF-8 characters only (invalid bytes become U+FFFD, as Python's
 * "replace" decoder does), and stop strings that are never emitted, not even in part. */
#ifndef STORYBOT_TEXTSTREAM_H
#define STORYBOT_TEXTSTREAM_H

#include <stddef.h>

typedef struct {
    char *data;
    size_t len, cap;
} Buf;

void buf_append(Buf *b, const char *s, size_t n);
void buf_free(Buf *b);

typedef struct {
    unsigned char pending[4]; /* the start of a character whose remaining bytes have not arrived */
    size_t n_pending;
} Utf8Stream;

/* Appends to `out` the whole characters of (pending + bytes); keeps an incomplete tail pending. */
void utf8_feed(Utf8Stream *u, const char *bytes, size_t n, Buf *out);
/* At the end: an incomplete tail becomes one U+FFFD. */
void utf8_flush(Utf8Stream *u, Buf *out);

#define MAX_STOPS 8

typedef struct {
    const char *stops[MAX_STOPS]; /* UTF-8, non-empty */
    size_t stop_len[MAX_STOPS];
    int n_stops;
    Buf held;       /* text that may be the start of a stop string */
    int is_stopped;
} StopMatcher;

void stop_init(StopMatcher *m);
void stop_add(StopMatcher *m, const char *s, size_t len);
/* Appends to `out` the text that is safe to emit after `text` (whole characters). */
void stop_feed(StopMatcher *m, const char *text, size_t n, Buf *out);
void stop_flush(StopMatcher *m, Buf *out);
void stop_free(StopMatcher *m);

#endif
