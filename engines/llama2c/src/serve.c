/* The engine protocol. The main thread generates; a reader thread parses frames from stdin so that a
 * cancel is seen between two tokens. Frames go out on a duplicate of fd 1, and fd 1 itself points at
 * stderr, so nothing else can corrupt the stream. */
#include "serve.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "json.h"
#include "sampler.h"
#include "textstream.h"

#define MAX_FRAME_BYTES 65536
#define MAX_PROMPT_CHARS 32768
#define MAX_STOP_CHARS 64
#define REPEAT_WINDOW 64 /* tokens the repeat penalty looks back over */

typedef struct {
    long long id;
    char *prompt;  /* UTF-8 */
    int max_tokens;
    float temperature, top_p, repeat_penalty;
    int top_k;
    long long seed; /* -1: any */
    int special;    /* control tokens written in the prompt (chat markup) become those tokens */
    char *stops[MAX_STOPS];
    size_t stop_len[MAX_STOPS];
    int n_stops;
    double arrived_ms;
} Request;

typedef enum { FRAME_INVALID, FRAME_GENERATE, FRAME_CANCEL, FRAME_SHUTDOWN } FrameKind;

/* ---------------------------------------------------------------------------------------------------------
 * Output */

static int frames_fd = -1;
static pthread_mutex_t write_lock = PTHREAD_MUTEX_INITIALIZER;

static void send_line(const char *line, size_t len) {
    pthread_mutex_lock(&write_lock);
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(frames_fd, line + done, len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) _exit(EXIT_OK); /* the parent is gone; nobody is left to answer */
        done += (size_t)n;
    }
    pthread_mutex_unlock(&write_lock);
}

static void send_error(const char *code, const char *message, long long id) {
    char frame[4096];
    int n = snprintf(frame, sizeof frame, "{\"v\":1,\"type\":\"error\",\"code\":\"%s\",\"message\":", code);
    size_t len = json_escape(frame, (size_t)n, sizeof frame - 64, message, strlen(message));
    if (len >= sizeof frame - 64) len = json_escape(frame, (size_t)n, sizeof frame, "(message too long)", 18);
    len += (size_t)snprintf(frame + len, sizeof frame - len, ",\"id\":%lld}\n", id);
    send_line(frame, len);
}

/* Text is sent in slices of whole characters small enough that the escaped frame stays under the limit. */
static void send_token(long long id, const char *text, size_t len) {
    static char frame[MAX_FRAME_BYTES];
    while (len > 0) {
        size_t take = len < 8192 ? len : 8192;
        while (take < len && ((unsigned char)text[take] & 0xC0) == 0x80) take--; /* not inside a character */
        int n = snprintf(frame, sizeof frame, "{\"v\":1,\"type\":\"token\",\"id\":%lld,\"text\":", id);
        size_t used = json_escape(frame, (size_t)n, sizeof frame - 4, text, take);
        frame[used++] = '}';
        frame[used++] = '\n';
        send_line(frame, used);
        text += take;
        len -= take;
    }
}

/* ---------------------------------------------------------------------------------------------------------
 * Frame parsing: the same rules as engines/protocol.py decode() */

static int get_int(const JsonObject *o, const char *key, long long lo, long long hi, long long fallback, int required,
                   long long *out, char *err, size_t err_size, const char *kind) {
    const JsonMember *m = json_get(o, key);
    if (!m) {
        if (required) return snprintf(err, err_size, "%s: missing field '%s'", kind, key), 0;
        *out = fallback;
        return 1;
    }
    if (m->type != JSON_NUMBER || !m->is_integer) return snprintf(err, err_size, "%s: %s must be an integer", kind, key), 0;
    if (m->integer < lo || m->integer > hi)
        return snprintf(err, err_size, "%s is %lld, expected %lld..%lld", key, m->integer, lo, hi), 0;
    *out = m->integer;
    return 1;
}

static int get_float(const JsonObject *o, const char *key, double lo, double hi, double fallback, float *out,
                     char *err, size_t err_size, const char *kind) {
    const JsonMember *m = json_get(o, key);
    if (!m) {
        *out = (float)fallback;
        return 1;
    }
    if (m->type != JSON_NUMBER || !isfinite(m->number))
        return snprintf(err, err_size, "%s: %s must be a finite number", kind, key), 0;
    if (m->number < lo || m->number > hi)
        return snprintf(err, err_size, "%s is %g, expected %g..%g", key, m->number, lo, hi), 0;
    *out = (float)m->number;
    return 1;
}

static int only_known_fields(const JsonObject *o, const char *const *known, char *err, size_t err_size,
                             const char *kind) {
    for (int i = 0; i < o->count; i++) {
        const char *key = o->members[i].key.s;
        int ok = 0;
        for (const char *const *k = known; *k; k++) ok |= strcmp(*k, key) == 0;
        if (!ok) return snprintf(err, err_size, "%s: unknown field '%s'", kind, key), 0;
    }
    return 1;
}

static char *copy_string(const JsonString *s) {
    char *p = xmalloc(s->len + 1, "request");
    memcpy(p, s->s, s->len + 1);
    return p;
}

static FrameKind parse_generate(const JsonObject *o, Request *r, char *err, size_t es) {
    static const char *const known[] = {"v", "type", "id", "prompt", "max_tokens", "temperature", "top_p", "top_k",
                                        "repeat_penalty", "seed", "stop", "special", NULL};
    long long v;
    if (!only_known_fields(o, known, err, es, "generate")) return FRAME_INVALID;
    if (!get_int(o, "id", 0, (1LL << 53) - 1, 0, 1, &r->id, err, es, "generate")) return FRAME_INVALID;
    const JsonMember *p = json_get(o, "prompt");
    if (!p) return snprintf(err, es, "generate: missing field 'prompt'"), FRAME_INVALID;
    if (p->type != JSON_STRING) return snprintf(err, es, "generate: prompt must be a string"), FRAME_INVALID;
    if (p->str.chars == 0) return snprintf(err, es, "generate: prompt is empty"), FRAME_INVALID;
    if (p->str.chars > MAX_PROMPT_CHARS)
        return snprintf(err, es, "generate: prompt has %zu characters, at most %d", p->str.chars, MAX_PROMPT_CHARS),
               FRAME_INVALID;
    if (!get_int(o, "max_tokens", 1, 1 << 20, 256, 0, &v, err, es, "generate")) return FRAME_INVALID;
    r->max_tokens = (int)v;
    if (!get_float(o, "temperature", 0, 10, 0.8, &r->temperature, err, es, "generate")) return FRAME_INVALID;
    if (!get_float(o, "top_p", 0, 1, 0.95, &r->top_p, err, es, "generate")) return FRAME_INVALID;
    if (!get_int(o, "top_k", 0, 1 << 20, 40, 0, &v, err, es, "generate")) return FRAME_INVALID;
    r->top_k = (int)v;
    if (!get_float(o, "repeat_penalty", 0.5, 5, 1.0, &r->repeat_penalty, err, es, "generate")) return FRAME_INVALID;
    if (!get_int(o, "seed", -1, (1LL << 31) - 1, -1, 0, &r->seed, err, es, "generate")) return FRAME_INVALID;
    const JsonMember *special = json_get(o, "special");
    if (special && special->type != JSON_BOOL)
        return snprintf(err, es, "generate: special must be a boolean"), FRAME_INVALID;
    r->special = special && special->boolean;
    const JsonMember *stop = json_get(o, "stop");
    if (stop) {
        if (stop->type != JSON_ARRAY) return snprintf(err, es, "generate: stop must be a list of strings"), FRAME_INVALID;
        if (stop->n_items > MAX_STOPS)
            return snprintf(err, es, "generate: %d stop strings, at most %d", stop->n_items, MAX_STOPS), FRAME_INVALID;
        for (int i = 0; i < stop->n_items; i++)
            if (stop->items[i].chars < 1 || stop->items[i].chars > MAX_STOP_CHARS)
                return snprintf(err, es, "generate: stop strings must be 1-%d characters", MAX_STOP_CHARS),
                       FRAME_INVALID;
    }
    /* valid: take copies */
    r->prompt = copy_string(&p->str);
    r->n_stops = 0;
    if (stop) {
        for (int i = 0; i < stop->n_items; i++) {
            r->stops[r->n_stops] = copy_string(&stop->items[i]);
            r->stop_len[r->n_stops++] = stop->items[i].len;
        }
    }
    return FRAME_GENERATE;
}

static FrameKind parse_frame(const char *line, size_t len, Request *r, char *err, size_t es) {
    static JsonObject obj; /* only the reader thread parses */
    static char arena[MAX_FRAME_BYTES + 64];
    if (!json_parse_object(line, len, &obj, arena, sizeof arena, err, es)) return FRAME_INVALID;
    const JsonMember *v = json_get(&obj, "v");
    if (!v || v->type != JSON_NUMBER || !v->is_integer || v->integer != 1)
        return snprintf(err, es, "frame has no protocol version 1 (\"v\":1)"), FRAME_INVALID;
    const JsonMember *type = json_get(&obj, "type");
    if (!type || type->type != JSON_STRING) return snprintf(err, es, "frame has no \"type\" string"), FRAME_INVALID;
    const char *kind = type->str.s;
    if (strcmp(kind, "generate") == 0) return parse_generate(&obj, r, err, es);
    if (strcmp(kind, "cancel") == 0) {
        static const char *const known[] = {"v", "type", "id", NULL};
        if (!only_known_fields(&obj, known, err, es, kind)) return FRAME_INVALID;
        if (!get_int(&obj, "id", 0, (1LL << 53) - 1, 0, 1, &r->id, err, es, kind)) return FRAME_INVALID;
        return FRAME_CANCEL;
    }
    if (strcmp(kind, "shutdown") == 0) {
        static const char *const known[] = {"v", "type", NULL};
        if (!only_known_fields(&obj, known, err, es, kind)) return FRAME_INVALID;
        return FRAME_SHUTDOWN;
    }
    if (strcmp(kind, "ready") == 0 || strcmp(kind, "token") == 0 || strcmp(kind, "done") == 0 ||
        strcmp(kind, "error") == 0)
        return snprintf(err, es, "%s is not a request frame", kind), FRAME_INVALID;
    snprintf(err, es, "unknown frame type '%.64s', expected one of cancel, generate, shutdown", kind);
    return FRAME_INVALID;
}

static void free_request(Request *r) {
    free(r->prompt);
    for (int i = 0; i < r->n_stops; i++) free(r->stops[i]);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------------------------------------------------
 * Shared state between the reader thread and the generator */

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int has_request;       /* `pending` holds a generate for the main thread */
    Request pending;
    long long busy_id;     /* the generation accepted and not yet answered, or -1 */
    atomic_llong cancel_id; /* the generation to stop, or -1 */
    int quit;              /* shutdown or end of input */
} Shared;

static Shared shared = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, {0}, -1, -1, 0};

/* Handles one line; returns 1 for shutdown. */
static int accept_frame(const char *line, size_t len) {
    size_t i = 0;
    while (i < len && (line[i] == ' ' || (line[i] >= '\t' && line[i] <= '\r'))) i++;
    if (i == len) return 0; /* blank lines are ignored */
    Request r = {0};
    char err[512];
    switch (parse_frame(line, len, &r, err, sizeof err)) {
    case FRAME_INVALID:
        send_error("protocol", err, -1);
        return 0;
    case FRAME_GENERATE: {
        r.arrived_ms = now_ms();
        pthread_mutex_lock(&shared.lock);
        int busy = shared.busy_id >= 0 || shared.has_request;
        if (!busy) {
            shared.busy_id = r.id;
            shared.pending = r;
            shared.has_request = 1;
            pthread_cond_signal(&shared.changed);
        }
        pthread_mutex_unlock(&shared.lock);
        if (busy) {
            send_error("busy", "a generation is already running", r.id);
            free_request(&r);
        }
        return 0;
    }
    case FRAME_CANCEL:
        pthread_mutex_lock(&shared.lock);
        if (shared.busy_id == r.id) atomic_store(&shared.cancel_id, r.id);
        pthread_mutex_unlock(&shared.lock);
        return 0;
    case FRAME_SHUTDOWN:
        break;
    }
    return 1;
}

static void stop_serving(void) {
    pthread_mutex_lock(&shared.lock);
    shared.quit = 1;
    atomic_store(&shared.cancel_id, shared.busy_id); /* stop what is running */
    pthread_cond_signal(&shared.changed);
    pthread_mutex_unlock(&shared.lock);
}

/* Splits stdin into lines of at most MAX_FRAME_BYTES (newline included); longer ones are reported once
 * and skipped up to their newline. */
static void *reader_main(void *unused) {
    (void)unused;
    static char line[MAX_FRAME_BYTES + 1];
    char chunk[16384];
    size_t len = 0;
    int skipping = 0;
    for (;;) {
        ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (ssize_t i = 0; i < n; i++) {
            char c = chunk[i];
            if (skipping) {
                if (c == '\n') skipping = 0;
                continue;
            }
            line[len++] = c;
            if (c == '\n') {
                if (accept_frame(line, len)) goto done; /* shutdown */
                len = 0;
            } else if (len == MAX_FRAME_BYTES) {
                send_error("protocol", "frame longer than 65536 bytes; skipped", -1);
                skipping = 1;
                len = 0;
            }
        }
    }
    if (len > 0) send_error("protocol", "unterminated frame at end of input; skipped", -1);
done:
    stop_serving();
    return NULL;
}

/* ---------------------------------------------------------------------------------------------------------
 * Generation */

typedef struct {
    long long id;
} CancelCheck;

static int is_cancelled(void *arg) { return atomic_load(&shared.cancel_id) == ((CancelCheck *)arg)->id; }

static unsigned long long pick_seed(long long seed) {
    if (seed > 0) return (unsigned long long)seed;
    if (seed == 0) return 0x9E3779B97F4A7C15ull; /* xorshift cannot start from 0 */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long long s = (unsigned long long)ts.tv_sec * 1000000007ull ^ (unsigned long long)ts.tv_nsec ^
                           (unsigned long long)getpid() << 32;
    return s ? s : 1;
}

static void send_done(const Request *r, const char *reason, int tokens, int prompt_tokens, double first_ms) {
    char frame[512];
    int n = snprintf(frame, sizeof frame,
                     "{\"v\":1,\"type\":\"done\",\"id\":%lld,\"reason\":\"%s\",\"tokens\":%d,\"prompt_tokens\":%d,"
                     "\"first_token_ms\":%.1f,\"total_ms\":%.1f}\n",
                     r->id, reason, tokens, prompt_tokens, first_ms, now_ms() - r->arrived_ms);
    send_line(frame, (size_t)n);
}

/* Answers one generate with token frames and a done frame, or one error frame. */
static void generate(Transformer *t, const Tokenizer *tok, const Request *r) {
    const Config *c = &t->model.config;
    CancelCheck cc = {r->id};
    int n_prompt;
    int *prompt = encode(tok, r->prompt, strlen(r->prompt), 1, r->special, &n_prompt);
    if (n_prompt == 0) { /* a model without BOS and a prompt of nothing it can encode */
        prompt[0] = tok->bos_id >= 0 ? tok->bos_id : tok->eos_id >= 0 ? tok->eos_id : 0;
        n_prompt = 1;
    }
    if (n_prompt >= t->context) {
        char msg[160];
        snprintf(msg, sizeof msg, "prompt is %d tokens; the context holds %d", n_prompt, t->context);
        free(prompt);
        pthread_mutex_lock(&shared.lock);
        shared.busy_id = -1;
        pthread_mutex_unlock(&shared.lock);
        send_error("bad_request", msg, r->id);
        return;
    }
    Sampler sampler;
    build_sampler(&sampler, c->vocab_size, r->temperature, r->top_p, pick_seed(r->seed), t->kernels);
    sampler.top_k = r->top_k;
    sampler.repeat_penalty = r->repeat_penalty;
    Window win;
    build_window(&win, t, n_prompt < t->context / 2 ? n_prompt : t->context / 2);
    StopMatcher stops;
    stop_init(&stops);
    for (int i = 0; i < r->n_stops; i++) stop_add(&stops, r->stops[i], r->stop_len[i]);
    Utf8Stream utf8 = {0};
    Buf chars = {0}, out = {0};
    int recent[REPEAT_WINDOW], n_recent = 0; /* distinct recently generated tokens, for the repeat penalty */

    const char *reason = "length";
    int count = 0;
    double first_ms = 0;
    float *logits = NULL; /* NULL once cancelled */
    if (!is_cancelled(&cc)) logits = feed_many(t, &win, prompt, n_prompt, is_cancelled, &cc); /* batched */
    /* The penalty looks at generated tokens only, as llama.cpp's sampler chain does (prompt tokens are never
     * accepted into it): the prompt names the story's subject, which the story must go on naming. */
    int prev = prompt[n_prompt - 1];
    for (;;) {
        if (!logits || is_cancelled(&cc)) {
            reason = "cancelled";
            break;
        }
        int next = sample(&sampler, logits, recent, n_recent);
        if (count == 0) first_ms = now_ms() - r->arrived_ms;
        if (is_end_token(tok, next)) {
            reason = "eos";
            break;
        }
        count++;
        size_t piece_len;
        const char *piece = decode(tok, prev, next, &piece_len);
        if (!is_shown(tok, next, piece, piece_len) && tok->kind == TOKENIZER_BPE) piece_len = 0;
        chars.len = out.len = 0;
        utf8_feed(&utf8, piece, piece_len, &chars);
        stop_feed(&stops, chars.data ? chars.data : "", chars.len, &out);
        if (out.len) send_token(r->id, out.data, out.len);
        if (stops.is_stopped) {
            reason = "stop";
            break;
        }
        if (count >= r->max_tokens) break;
        int seen = 0;
        for (int j = 0; j < n_recent; j++) seen |= recent[j] == next;
        if (!seen) {
            if (n_recent == REPEAT_WINDOW) memmove(recent, recent + 1, (REPEAT_WINDOW - 1) * sizeof(int)), n_recent--;
            recent[n_recent++] = next;
        }
        logits = feed(t, &win, next, is_cancelled, &cc);
        prev = next;
    }
    if (strcmp(reason, "cancelled") != 0) {
        chars.len = out.len = 0;
        utf8_flush(&utf8, &chars);
        stop_feed(&stops, chars.data ? chars.data : "", chars.len, &out);
        stop_flush(&stops, &out);
        if (out.len) send_token(r->id, out.data, out.len);
    }
    buf_free(&chars);
    buf_free(&out);
    stop_free(&stops);
    free_window(&win);
    free_sampler(&sampler);
    free(prompt);
    pthread_mutex_lock(&shared.lock); /* free before replying: the parent may send its next request at once */
    shared.busy_id = -1;
    atomic_store(&shared.cancel_id, -1);
    pthread_mutex_unlock(&shared.lock);
    send_done(r, reason, count, n_prompt, first_ms);
}

int serve(Transformer *t, const Tokenizer *tok, const char *model_path, double load_ms) {
    signal(SIGPIPE, SIG_IGN);
    fflush(stdout);
    frames_fd = dup(STDOUT_FILENO);
    if (frames_fd < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) die(EXIT_INTERNAL, "cannot set up stdout: %s", strerror(errno));
    char frame[8192];
    int n = snprintf(frame, sizeof frame, "{\"v\":1,\"type\":\"ready\",\"engine\":\"llama2c\",\"model\":");
    Buf path = {0}; /* a file name need not be UTF-8; the frame must be */
    Utf8Stream u = {0};
    utf8_feed(&u, model_path, strlen(model_path), &path);
    utf8_flush(&u, &path);
    size_t len = json_escape(frame, (size_t)n, sizeof frame - 128, path.data ? path.data : "", path.len);
    buf_free(&path);
    if (len >= sizeof frame - 128) len = json_escape(frame, (size_t)n, sizeof frame, "?", 1);
    len += (size_t)snprintf(frame + len, sizeof frame - len, ",\"context_tokens\":%d,\"load_ms\":%.1f}\n", t->context,
                            load_ms);
    send_line(frame, len);

    pthread_t reader;
    if (pthread_create(&reader, NULL, reader_main, NULL) != 0) die(EXIT_NO_MEMORY, "cannot start the reader thread");
    pthread_detach(reader);
    for (;;) {
        pthread_mutex_lock(&shared.lock);
        while (!shared.has_request && !shared.quit) pthread_cond_wait(&shared.changed, &shared.lock);
        if (!shared.has_request) {
            pthread_mutex_unlock(&shared.lock);
            return EXIT_OK;
        }
        Request r = shared.pending;
        shared.has_request = 0;
        pthread_mutex_unlock(&shared.lock);
        generate(t, tok, &r);
        free_request(&r);
    }
}
