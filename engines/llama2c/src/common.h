/* Shared definitions: exit statuses (docs/llama2c-engine.md), fatal-error helpers, checked arithmetic. */
#ifndef STORYBOT_COMMON_H
#define STORYBOT_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define PROG "storybot-llama2c"

/* Exit statuses, one per failure class (the contract's table). */
enum {
    EXIT_OK = 0,
    EXIT_USAGE = 64,          /* bad command line */
    EXIT_MODEL_MALFORMED = 65, /* wrong magic, unknown version, header out of range */
    EXIT_MISSING = 66,        /* checkpoint or tokenizer missing or unreadable */
    EXIT_MODEL_SIZE = 67,     /* checkpoint size differs from what the header implies */
    EXIT_TOKENIZER_BAD = 68,  /* tokenizer malformed */
    EXIT_VOCAB_MISMATCH = 69, /* tokenizer vocab size differs from the checkpoint's */
    EXIT_INTERNAL = 70,
    EXIT_NO_MEMORY = 71,
};

/* Prints "storybot-llama2c: MESSAGE" as one stderr line and exits with `status`. */
_Noreturn void die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* malloc/calloc that exit 71 naming what could not be allocated. */
extern const char *loading_path; /* set while a checkpoint or tokenizer is loaded, for OOM messages */
void *xmalloc(size_t bytes, const char *what);
void softmax(float *x, int size); /* in place */
void *xcalloc(size_t count, size_t size, const char *what);

/* Overflow-checked size arithmetic: return 0 on overflow, else store the result. */
static inline int mul_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline int add_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_add_overflow(a, b, out); }

/* "17,101,696": thousands separators for the byte counts in messages. */
const char *fmt_count(uint64_t n, char buf[32]);

double now_ms(void); /* monotonic clock, milliseconds */

#endif
