/* A strict parser for the protocol's flat JSON objects (RFC 8259 syntax; values are strings, numbers,
 * booleans, null, or arrays of strings) and a writer's string escaper. Never trusts its input. */
#ifndef STORYBOT_JSON_H
#define STORYBOT_JSON_H

#include <stddef.h>

#define JSON_MAX_MEMBERS 32
#define JSON_MAX_ARRAY 16

typedef enum { JSON_STRING, JSON_NUMBER, JSON_BOOL, JSON_NULL, JSON_ARRAY } JsonType;

typedef struct {
    const char *s; /* decoded UTF-8, NUL-terminated (NUL inside is rejected) */
    size_t len;    /* bytes */
    size_t chars;  /* code points */
} JsonString;

typedef struct {
    JsonString key;
    JsonType type;
    JsonString str;       /* JSON_STRING */
    double number;        /* JSON_NUMBER */
    int is_integer;       /* JSON_NUMBER written without fraction or exponent, and it fits long long */
    long long integer;    /* JSON_NUMBER when is_integer */
    int boolean;          /* JSON_BOOL */
    JsonString items[JSON_MAX_ARRAY]; /* JSON_ARRAY: strings only */
    int n_items;
} JsonMember;

typedef struct {
    JsonMember members[JSON_MAX_MEMBERS];
    int count;
    char *arena;          /* decoded strings live here */
    size_t arena_used, arena_size;
} JsonObject;

/* Parses `text` (len bytes, need not be NUL-terminated) into `obj`, using `arena` (>= len + 64 bytes) for
 * decoded strings. Returns 1, or 0 with a message in err. */
int json_parse_object(const char *text, size_t len, JsonObject *obj, char *arena, size_t arena_size, char *err,
                      size_t err_size);

const JsonMember *json_get(const JsonObject *obj, const char *key);

/* Appends `s` (valid UTF-8) as a JSON string literal, quotes included, to out (of size cap); returns the new
 * length, or cap when it does not fit. */
size_t json_escape(char *out, size_t used, size_t cap, const char *s, size_t len);

/* 1 if s[0..len) is valid UTF-8 (no overlongs, surrogates or code points above U+10FFFF). */
int utf8_valid(const char *s, size_t len);

#endif
