/* Tokenizers: llama2.c's tokenizer.bin (sentencepiece-style: merges by score, <0xHH> byte fallback), and the
 * v3 checkpoint's metadata block, which holds either that kind or a GPT-2-style byte-level BPE (merges by rank,
 * a pre-tokenizer regex, special tokens). See docs/llama2c-engine.md. */
#ifndef STORYBOT_TOKENIZER_H
#define STORYBOT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

enum { TOKENIZER_SENTENCEPIECE = 1, TOKENIZER_BPE = 2 };
enum { PRE_NONE = 0, PRE_GPT2 = 1, PRE_SMOLLM = 2 };
/* GGUF token types */
enum { TOKEN_NORMAL = 1, TOKEN_UNKNOWN = 2, TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4, TOKEN_UNUSED = 5,
       TOKEN_BYTE = 6 };

typedef struct {
    uint64_t *keys;   /* (capacity,) left << 32 | right, or EMPTY */
    int32_t *rank;    /* (capacity,) */
    int32_t *result;  /* (capacity,) */
    uint32_t mask;    /* capacity - 1 (a power of two) */
} MergeMap;

typedef struct {
    int kind;           /* TOKENIZER_SENTENCEPIECE or TOKENIZER_BPE */
    char *bytes;        /* every token's bytes, each NUL-terminated, back to back */
    unsigned *offset;   /* (vocab_size,) where token i starts in `bytes` */
    unsigned *length;   /* (vocab_size,) its byte count (BPE tokens may contain NUL bytes) */
    float *scores;      /* (vocab_size,) merge scores */
    int *sorted;        /* (vocab_size,) token ids sorted by their strings, for lookups (sentencepiece) */
    int vocab_size;
    int max_token_length;
    char byte_pieces[512]; /* "\x00\0" "\x01\0" ...: the piece of a <0xHH> token */
    /* v3 metadata (tokenizer.bin: bos 1, eos 2, add_bos 1, no types, ends at 1 and 2) */
    int from_metadata;
    int bos_id, eos_id; /* -1: none */
    int add_bos;
    unsigned char *type; /* (vocab_size,) GGUF token types, or NULL */
    int *end_ids;
    int n_end_ids;
    char *chat_template; /* NUL-terminated; "" for none */
    /* byte-level BPE */
    int pre_tokenizer;
    MergeMap merges;
    int byte_token[256]; /* the token of each single byte, or -1 */
    int *specials;       /* control, unknown and user-defined tokens, longest text first */
    int n_specials;
} Tokenizer;

/* Validates and loads tokenizer.bin; exits 66 (missing), 68 (malformed) or 69 (vocab size differs) naming
 * the file. */
void build_tokenizer(Tokenizer *t, const char *path, int vocab_size);
/* Parses a v3 checkpoint's metadata block (size bytes at `data`); exits 68 (malformed) or 69 (its token count
 * differs from vocab_size) naming `path`. */
void build_tokenizer_v3(Tokenizer *t, const char *path, const uint8_t *data, uint64_t size, int vocab_size);
void free_tokenizer(Tokenizer *t);

/* Encodes text[0..len) into a new array (the caller frees it) and stores the count in *n.
 * sentencepiece: as llama2.c (BOS when `bos`, a dummy-prefix space when text is non-empty, then greedy
 * highest-score merges). BPE: BOS when `bos` and the model's add_bos; control tokens written in the text become
 * those tokens only when `special`; then the pre-tokenizer's pieces, each merged by rank. */
int *encode(const Tokenizer *t, const char *text, size_t len, int bos, int special, int *n);

/* The bytes `token` stands for after `prev` (*len of them): sentencepiece strips the leading space after BOS
 * and turns <0xHH> into the raw byte; BPE gives the token's bytes. */
const char *decode(const Tokenizer *t, int prev, int token, size_t *len);

/* Whether generated output shows the token: llama2.c's safe_printf rule for sentencepiece (a single-byte piece
 * that is neither printable nor space is not shown); for BPE every token but control tokens (as llama.cpp
 * prints them without `special`). */
int is_shown(const Tokenizer *t, int token, const char *piece, size_t len);

/* Whether a sampled `token` ends a generation: tokenizer.bin's BOS (1) and EOS (2) as llama2.c; v3's end ids
 * (and its bos/eos for the sentencepiece kind). */
int is_end_token(const Tokenizer *t, int token);

/* Byte-level BPE internals (bpe.c) */
int *bpe_encode(const Tokenizer *t, const char *text, size_t len, int bos, int special, int *n);
void bpe_prepare(Tokenizer *t); /* byte_token and specials, once the vocabulary is loaded */
int merge_lookup(const MergeMap *m, int left, int right, int *result); /* the rank, or -1 */

#endif
