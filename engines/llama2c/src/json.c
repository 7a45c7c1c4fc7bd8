#include "json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *p, *end;
    JsonObject *obj;
    char *err;
    size_t err_size;
} Parser;

static int fail(Parser *ps, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err, ps->err_size, fmt, ap);
    va_end(ap);
    return 0;
}

static size_t column(const Parser *ps, const char *start) { return (size_t)(ps->p - start) + 1; }

static void skip_ws(Parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

/* Length of the UTF-8 sequence at s (max bytes available), or 0 when it is invalid. */
static size_t utf8_sequence(const unsigned char *s, size_t max) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07;
    else return 0;
    if (max < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

int utf8_valid(const char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_sequence((const unsigned char *)s + i, len - i);
        if (n == 0) return 0;
        i += n;
    }
    return 1;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static size_t put_utf8(char *out, unsigned cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | (cp >> 6 & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A string literal at ps->p (on its opening quote), decoded into the arena. */
static int parse_string(Parser *ps, JsonString *out, const char *start) {
    JsonObject *o = ps->obj;
    ps->p++;
    char *dst = o->arena + o->arena_used;
    size_t room = o->arena_size - o->arena_used, n = 0, chars = 0;
    for (;;) {
        if (ps->p >= ps->end) return fail(ps, "unterminated string");
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') { ps->p++; break; }
        if (c < 0x20) return fail(ps, "control character in a string at column %zu", column(ps, start));
        if (room - n < 8) return fail(ps, "strings too long");
        if (c != '\\') {
            size_t len = utf8_sequence((const unsigned char *)ps->p, (size_t)(ps->end - ps->p));
            if (len == 0) return fail(ps, "invalid UTF-8 at column %zu", column(ps, start));
            memcpy(dst + n, ps->p, len);
            n += len;
            ps->p += len;
            chars++;
            continue;
        }
        if (ps->end - ps->p < 2) return fail(ps, "unterminated escape");
        char e = ps->p[1];
        ps->p += 2;
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e != '\0' && simple && e != 'u') {
            static const char map[] = "\"\\/\b\f\n\r\t";
            dst[n++] = map[simple - "\"\\/bfnrt"];
            chars++;
            continue;
        }
        if (e != 'u') return fail(ps, "invalid escape \\%c at column %zu", e, column(ps, start) - 2);
        unsigned cp;
        if (ps->end - ps->p < 4 || !hex4(ps->p, &cp)) return fail(ps, "invalid \\u escape at column %zu", column(ps, start));
        ps->p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(ps, "lone low surrogate \\u%04X", cp);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned lo;
            if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || !hex4(ps->p + 2, &lo) || lo < 0xDC00 ||
                lo > 0xDFFF)
                return fail(ps, "lone high surrogate \\u%04X", cp);
            ps->p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp == 0) return fail(ps, "NUL character in a string");
        n += put_utf8(dst + n, cp);
        chars++;
    }
    dst[n] = '\0';
    *out = (JsonString){dst, n, chars};
    o->arena_used += n + 1;
    return 1;
}

static int parse_number(Parser *ps, JsonMember *m, const char *start) {
    const char *s = ps->p;
    const char *q = s;
    if (q < ps->end && *q == '-') q++;
    if (q >= ps->end || !(*q >= '0' && *q <= '9')) return fail(ps, "invalid value at column %zu", column(ps, start));
    if (*q == '0') q++;
    else while (q < ps->end && *q >= '0' && *q <= '9') q++;
    int integer = 1;
    if (q < ps->end && *q == '.') {
        integer = 0;
        q++;
        if (q >= ps->end || !(*q >= '0' && *q <= '9')) return fail(ps, "invalid number at column %zu", column(ps, start));
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        integer = 0;
        q++;
        if (q < ps->end && (*q == '+' || *q == '-')) q++;
        if (q >= ps->end || !(*q >= '0' && *q <= '9')) return fail(ps, "invalid number at column %zu", column(ps, start));
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    size_t len = (size_t)(q - s);
    if (len > 400) return fail(ps, "number too long at column %zu", column(ps, start));
    char buf[401];
    memcpy(buf, s, len);
    buf[len] = '\0';
    m->type = JSON_NUMBER;
    m->number = strtod(buf, NULL);
    m->is_integer = 0;
    if (integer) {
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        if (errno == 0) {
            m->is_integer = 1;
            m->integer = v;
        }
    }
    ps->p = q;
    return 1;
}

static int match_word(Parser *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) >= n && memcmp(ps->p, word, n) == 0) {
        ps->p += n;
        return 1;
    }
    return 0;
}

static int parse_value(Parser *ps, JsonMember *m, const char *start) {
    if (ps->p >= ps->end) return fail(ps, "missing value");
    char c = *ps->p;
    if (c == '"') {
        m->type = JSON_STRING;
        return parse_string(ps, &m->str, start);
    }
    if (c == '[') {
        ps->p++;
        m->type = JSON_ARRAY;
        m->n_items = 0;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ']') { ps->p++; return 1; }
        for (;;) {
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "arrays hold only strings here (column %zu)", column(ps, start));
            if (m->n_items == JSON_MAX_ARRAY) return fail(ps, "array longer than %d items", JSON_MAX_ARRAY);
            if (!parse_string(ps, &m->items[m->n_items++], start)) return 0;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
            if (ps->p < ps->end && *ps->p == ']') { ps->p++; return 1; }
            return fail(ps, "expected , or ] at column %zu", column(ps, start));
        }
    }
    if (c == '{') return fail(ps, "nested objects are not part of the protocol (column %zu)", column(ps, start));
    if (match_word(ps, "true")) { m->type = JSON_BOOL; m->boolean = 1; return 1; }
    if (match_word(ps, "false")) { m->type = JSON_BOOL; m->boolean = 0; return 1; }
    if (match_word(ps, "null")) { m->type = JSON_NULL; return 1; }
    return parse_number(ps, m, start);
}

int json_parse_object(const char *text, size_t len, JsonObject *obj, char *arena, size_t arena_size, char *err,
                      size_t err_size) {
    Parser ps = {text, text + len, obj, err, err_size};
    obj->count = 0;
    obj->arena = arena;
    obj->arena_used = 0;
    obj->arena_size = arena_size;
    if (!utf8_valid(text, len)) return fail(&ps, "frame is not UTF-8");
    skip_ws(&ps);
    if (ps.p >= ps.end || *ps.p != '{') return fail(&ps, "frame is not a JSON object");
    ps.p++;
    skip_ws(&ps);
    if (ps.p < ps.end && *ps.p == '}') {
        ps.p++;
    } else {
        for (;;) {
            skip_ws(&ps);
            if (ps.p >= ps.end || *ps.p != '"') return fail(&ps, "expected a member name at column %zu", column(&ps, text));
            if (obj->count == JSON_MAX_MEMBERS) return fail(&ps, "more than %d members", JSON_MAX_MEMBERS);
            JsonMember *m = &obj->members[obj->count];
            memset(m, 0, sizeof *m);
            if (!parse_string(&ps, &m->key, text)) return 0;
            for (int i = 0; i < obj->count; i++)
                if (strcmp(obj->members[i].key.s, m->key.s) == 0) return fail(&ps, "duplicate member \"%s\"", m->key.s);
            skip_ws(&ps);
            if (ps.p >= ps.end || *ps.p != ':') return fail(&ps, "expected : at column %zu", column(&ps, text));
            ps.p++;
            skip_ws(&ps);
            if (!parse_value(&ps, m, text)) return 0;
            obj->count++;
            skip_ws(&ps);
            if (ps.p < ps.end && *ps.p == ',') { ps.p++; continue; }
            if (ps.p < ps.end && *ps.p == '}') { ps.p++; break; }
            return fail(&ps, "expected , or } at column %zu", column(&ps, text));
        }
    }
    skip_ws(&ps);
    if (ps.p != ps.end) return fail(&ps, "extra data after the object at column %zu", column(&ps, text));
    return 1;
}

const JsonMember *json_get(const JsonObject *obj, const char *key) {
    for (int i = 0; i < obj->count; i++)
        if (strcmp(obj->members[i].key.s, key) == 0) return &obj->members[i];
    return NULL;
}

size_t json_escape(char *out, size_t used, size_t cap, const char *s, size_t len) {
    size_t n = used;
#define PUT(c) do { if (n + 1 >= cap) return cap; out[n++] = (c); } while (0)
    PUT('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') { PUT('\\'); PUT((char)c); }
        else if (c == '\n') { PUT('\\'); PUT('n'); }
        else if (c == '\r') { PUT('\\'); PUT('r'); }
        else if (c == '\t') { PUT('\\'); PUT('t'); }
        else if (c < 0x20) {
            if (n + 7 >= cap) return cap;
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else PUT((char)c);
    }
    PUT('"');
#undef PUT
    out[n] = '\0';
    return n;
}
