/* llama2.c's tokenizer.bin: byte-pair encoding by merge score, and decoding with byte-fallback tokens. */
#ifndef STORYBOT_TOKENIZER_H
#define STORYBOT_TOKENIZER_H

#include <stddef.h>

typedef struct {
    char *bytes;        /* every token's bytes, each NUL-terminated, back to back */
    unsigned *offset;   /* (vocab_size,) where token i starts in `bytes` */
    float *scores;      /* (vocab_size,) merge scores */
    int *sorted;        /* (vocab_size,) token ids sorted by their strings, for lookups */
    int vocab_size;
    int max_token_length;
    char byte_pieces[512]; /* "\x00\0" "\x01\0" ...: the piece of a <0xHH> token */
} Tokenizer;

/* Validates and loads; exits 66 (missing), 68 (malformed) or 69 (vocab size differs) naming the file. */
void build_tokenizer(Tokenizer *t, const char *path, int vocab_size);
void free_tokenizer(Tokenizer *t);

/* Encodes `text` as llama2.c does (BOS when `bos`, a dummy-prefix space when text is non-empty, then
 * greedy highest-score merges). tokens needs room for strlen(text) + 3. Returns the count. */
int encode(const Tokenizer *t, const char *text, int bos, int *tokens);

/* The bytes `token` stands for after `prev` (leading space stripped after BOS; <0xHH> as the raw byte). */
const char *decode(const Tokenizer *t, int prev, int token);

/* llama2.c's safe_printf rule: a single-byte piece that is neither printable nor space is not shown. */
int is_printable_piece(const char *piece);

#endif
