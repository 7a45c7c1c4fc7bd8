/* storybot-llama2c: a llama2.c-compatible runner for v0/v1/v2 checkpoints, and an engine-protocol server.
 * docs/llama2c-engine.md is the contract for everything here. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "json.h"
#include "kernels.h"
#include "model.h"
#include "sampler.h"
#include "serve.h"
#include "tokenizer.h"
#include "transformer.h"

typedef struct {
    const char *checkpoint;
    const char *tokenizer;   /* NULL: beside the checkpoint, else ./tokenizer.bin */
    float temperature;
    float top_p;
    long long seed;          /* 0: time-based */
    int steps;               /* 0: seq_len */
    const char *prompt;
    const char *prompt_ids;  /* "1,2,3" or NULL */
    int threads;
    int serve;
    int context;             /* 0: min(steps, seq_len) */
    int keep;                /* -1: min(prompt length, context / 2) */
    LoadMode load;
    int portable_kernels;
    const char *dump_logits;
    const char *dump_ids;
    int special;             /* chat markup in -i becomes special tokens (byte-level BPE) */
    int tokenize;            /* --tokenize: JSON lines on stdin -> token ids on stdout */
    int batch;               /* --batch: prompt tokens per prefill batch; 0: PREFILL_BATCH (1 with --dump-logits) */
} Options;

static void usage(FILE *out) {
    fprintf(out,
            "Usage: " PROG " CHECKPOINT [options]\n"
            "Runs a llama2.c checkpoint (v0 fp32, v1 fp32, v2 int8, storybot's v3) like llama2.c's run, or serves\n"
            "the storybot"
            "engine protocol. Example: " PROG " stories15M.bin -n 256 -i \"Once upon a time\"\n"
            "\n"
            "llama2.c options:\n"
            "  -t F          temperature, default 1.0; 0 = greedy\n"
            "  -p F          top-p (nucleus) in [0,1], default 0.9\n"
            "  -s N          random seed, default time-based\n"
            "  -n N          steps (positions incl. the prompt), default 256; 0 = the model's seq_len\n"
            "  -i TEXT       prompt\n"
            "  -z PATH       tokenizer.bin, default beside the checkpoint, else ./tokenizer.bin (v3: ignored,\n"
            "                the checkpoint carries its tokenizer)\n"
            "  -m generate   mode (chat is not supported)\n"
            "storybot options:\n"
            "  -j N                  threads, default 1\n"
            "  --serve               engine protocol v1 on stdin/stdout (docs/engine-protocol.md)\n"
            "  --context N           KV-cache positions, default min(steps, seq_len)\n"
            "  --keep N              tokens kept at the start when the window shifts (default: the prompt)\n"
            "  --load mmap|read      map the checkpoint (default) or read it into memory\n"
            "  --kernels auto|portable   force the plain C kernels\n"
            "  --batch N             prompt tokens run through the layers together, 1-%d (default %d; 1 = token\n"
            "                        by token, the default with --dump-logits)\n"
            "  --prompt-ids A,B,C    the prompt as token ids (no BOS added); replaces -i\n"
            "  --dump-logits PATH    append every step's logits (float32, little-endian); with --batch above 1\n"
            "                        from the prompt's last token on\n"
            "  --dump-ids PATH       write every token id of the sequence\n"
            "  --special             control tokens written in -i (e.g. <|im_start|>) become those tokens\n"
            "  --tokenize            tests: read JSON lines {\"text\": S, \"special\": B, \"bos\": B} on stdin\n"
            "                        (or \"hex\": the text's bytes in hex, for bytes that are not UTF-8),\n"
            "                        print per line the ids, a tab and the hex bytes the ids decode to\n"
            "  -h, --help            this text\n"
            "Exit statuses: 64 usage, 65 malformed checkpoint, 66 missing file, 67 checkpoint size, 68 malformed\n"
            "tokenizer, 69 vocab mismatch, 70 internal, 71 out of memory.\n",
            PREFILL_BATCH, PREFILL_BATCH);
}

static _Noreturn void usage_error(const char *fmt, const char *arg) {
    char msg[512];
    snprintf(msg, sizeof msg, fmt, arg);
    fprintf(stderr, PROG ": %s (see --help)\n", msg);
    exit(EXIT_USAGE);
}

static long long parse_int(const char *flag, const char *s, long long lo, long long hi) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s wants an integer in %lld..%lld, got '%s'", flag, lo, hi, s);
        usage_error("%s", msg);
    }
    return v;
}

static float parse_float(const char *flag, const char *s, double lo, double hi) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s wants a number in %g..%g, got '%s'", flag, lo, hi, s);
        usage_error("%s", msg);
    }
    return (float)v;
}

static Options parse_options(int argc, char **argv) {
    Options o = {.temperature = 1.0f, .top_p = 0.9f, .steps = 256, .threads = 1, .keep = -1, .load = LOAD_MMAP};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(EXIT_OK);
        }
        if (a[0] != '-') {
            if (o.checkpoint) usage_error("unexpected argument '%s'", a);
            o.checkpoint = a;
            continue;
        }
        if (strcmp(a, "--serve") == 0) {
            o.serve = 1;
            continue;
        }
        if (strcmp(a, "--special") == 0) {
            o.special = 1;
            continue;
        }
        if (strcmp(a, "--tokenize") == 0) {
            o.tokenize = 1;
            continue;
        }
        if (i + 1 >= argc) usage_error("%s needs a value", a);
        const char *v = argv[++i];
        if (strcmp(a, "-t") == 0) o.temperature = parse_float(a, v, 0, 1e6);
        else if (strcmp(a, "-p") == 0) o.top_p = parse_float(a, v, 0, 1);
        else if (strcmp(a, "-s") == 0) o.seed = parse_int(a, v, INT_MIN, INT_MAX);
        else if (strcmp(a, "-n") == 0) o.steps = (int)parse_int(a, v, 0, INT_MAX / 2);
        else if (strcmp(a, "-i") == 0) o.prompt = v;
        else if (strcmp(a, "-z") == 0) o.tokenizer = v;
        else if (strcmp(a, "-m") == 0) {
            if (strcmp(v, "generate") != 0)
                usage_error(strcmp(v, "chat") == 0 ? "-m %s is not supported" : "unknown mode -m %s", v);
        } else if (strcmp(a, "-y") == 0) { /* llama2.c's chat system prompt: meaningless in generate mode */
        } else if (strcmp(a, "-j") == 0) o.threads = (int)parse_int(a, v, 1, 256);
        else if (strcmp(a, "--context") == 0) o.context = (int)parse_int(a, v, 1, 1048576);
        else if (strcmp(a, "--keep") == 0) o.keep = (int)parse_int(a, v, 0, 1048576);
        else if (strcmp(a, "--load") == 0) {
            if (strcmp(v, "mmap") == 0) o.load = LOAD_MMAP;
            else if (strcmp(v, "read") == 0) o.load = LOAD_READ;
            else usage_error("--load wants mmap or read, got '%s'", v);
        } else if (strcmp(a, "--kernels") == 0) {
            if (strcmp(v, "portable") == 0) o.portable_kernels = 1;
            else if (strcmp(v, "auto") != 0) usage_error("--kernels wants auto or portable, got '%s'", v);
        } else if (strcmp(a, "--prompt-ids") == 0) o.prompt_ids = v;
        else if (strcmp(a, "--dump-logits") == 0) o.dump_logits = v;
        else if (strcmp(a, "--dump-ids") == 0) o.dump_ids = v;
        else if (strcmp(a, "--batch") == 0) o.batch = (int)parse_int(a, v, 1, PREFILL_BATCH);
        else usage_error("unknown option %s", a);
    }
    if (!o.checkpoint) usage_error("%s", "no checkpoint given");
    return o;
}

/* tokenizer.bin beside the checkpoint, else in the working directory */
static char *default_tokenizer(const char *checkpoint) {
    const char *slash = strrchr(checkpoint, '/');
    if (slash) {
        size_t dir = (size_t)(slash - checkpoint) + 1;
        char *p = xmalloc(dir + sizeof "tokenizer.bin", "path");
        memcpy(p, checkpoint, dir);
        memcpy(p + dir, "tokenizer.bin", sizeof "tokenizer.bin");
        if (access(p, F_OK) == 0) return p;
        free(p);
    }
    char *p = xmalloc(sizeof "tokenizer.bin", "path");
    memcpy(p, "tokenizer.bin", sizeof "tokenizer.bin");
    return p;
}

static int parse_prompt_ids(const char *s, int vocab_size, int *out, int cap) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= vocab_size || (*end != ',' && *end != '\0') || n == cap) {
            char msg[128];
            snprintf(msg, sizeof msg, "--prompt-ids wants comma-separated ids in 0..%d", vocab_size - 1);
            usage_error("%s", msg);
        }
        out[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (n == 0) usage_error("%s", "--prompt-ids is empty");
    return n;
}

static FILE *open_dump(const char *path) {
    if (!path) return NULL;
    FILE *f = fopen(path, "wb");
    if (!f) die(EXIT_MISSING, "%s: cannot create: %s", path, strerror(errno));
    return f;
}

/* The step from token to next: its piece printed (as llama2.c prints it) and its id dumped. */
static void emit(const Tokenizer *tok, int token, int next, FILE *dump_ids) {
    if (dump_ids) fprintf(dump_ids, " %d", next);
    size_t piece_len;
    const char *piece = decode(tok, token, next, &piece_len);
    if (is_shown(tok, next, piece, piece_len)) fwrite(piece, 1, piece_len, stdout);
    fflush(stdout);
}

static void dump(FILE *f, const char *path, const float *logits, int vocab_size) {
    if (f && fwrite(logits, sizeof(float), (size_t)vocab_size, f) != (size_t)vocab_size)
        die(EXIT_INTERNAL, "%s: write failed: %s", path, strerror(errno));
}

/* One generation, printed as llama2.c's run prints it. */
static void generate(Transformer *t, const Tokenizer *tok, const Options *o, int *prompt, int n_prompt, int steps) {
    const Config *c = &t->model.config;
    Sampler sampler;
    unsigned long long seed = o->seed != 0 ? (unsigned long long)o->seed : (unsigned long long)time(NULL);
    build_sampler(&sampler, c->vocab_size, o->temperature, o->top_p, seed, t->kernels);
    int keep = o->keep >= 0 ? o->keep : (n_prompt < t->context / 2 ? n_prompt : t->context / 2);
    Window win;
    build_window(&win, t, keep);
    FILE *dump_logits = open_dump(o->dump_logits);
    FILE *dump_ids = open_dump(o->dump_ids);
    if (dump_ids) fprintf(dump_ids, "%d", prompt[0]);

    double start = 0;
    int token = prompt[0], pos = 0, start_pos = 1; /* the clock starts after the first step, as llama2.c's */
    float *prefilled = NULL; /* the prompt's last logits, when the prompt ran as batches */
    if (t->prefill_batch > 1 && n_prompt > 1 && n_prompt <= steps) {
        prefilled = feed_many(t, &win, prompt, n_prompt, NULL, NULL);
        for (int i = 1; i < n_prompt; i++) emit(tok, prompt[i - 1], prompt[i], dump_ids);
        token = prompt[n_prompt - 1];
        pos = n_prompt - 1;
        start = now_ms();
        start_pos = pos; /* the steps after the prompt's batches */
    }
    while (pos < steps) {
        float *logits = prefilled ? prefilled : feed(t, &win, token, NULL, NULL);
        prefilled = NULL;
        dump(dump_logits, o->dump_logits, logits, c->vocab_size);
        int sampled = pos >= n_prompt - 1;
        int next = sampled ? sample(&sampler, logits, NULL, 0) : prompt[pos + 1];
        pos++;
        if (sampled && is_end_token(tok, next)) break; /* BOS (as llama2.c), EOS or another end id */
        emit(tok, token, next, dump_ids);
        token = next;
        if (start == 0) start = now_ms();
    }
    printf("\n");
    fflush(stdout);
    if (pos > start_pos && start > 0) {
        double elapsed = now_ms() - start;
        fprintf(stderr, "achieved tok/s: %f\n", elapsed > 0 ? (pos - start_pos) / elapsed * 1000.0 : 0.0);
    }
    if (win.shifts > 0) fprintf(stderr, PROG ": the context window shifted %d times\n", win.shifts);
    if (dump_ids) {
        fputc('\n', dump_ids);
        if (fclose(dump_ids) != 0) die(EXIT_INTERNAL, "%s: write failed: %s", o->dump_ids, strerror(errno));
    }
    if (dump_logits && fclose(dump_logits) != 0)
        die(EXIT_INTERNAL, "%s: write failed: %s", o->dump_logits, strerror(errno));
    free_window(&win);
    free_sampler(&sampler);
}

/* "hex": the bytes of a text that need not be UTF-8 (a JSON string must be), into buf (cap >= len / 2). */
static int unhex(const char *s, size_t len, char *buf, size_t *out_len) {
    static const char digits[] = "0123456789abcdef";
    if (len % 2) return 0;
    for (size_t i = 0; i < len; i += 2) {
        const char *hi = s[i] ? strchr(digits, s[i]) : NULL, *lo = s[i + 1] ? strchr(digits, s[i + 1]) : NULL;
        if (!hi || !lo) return 0;
        buf[i / 2] = (char)((hi - digits) * 16 + (lo - digits));
    }
    *out_len = len / 2;
    return 1;
}

/* --tokenize: one JSON object per input line, one output line per object. */
static int tokenize_lines(const Tokenizer *tok) {
    static JsonObject obj;
    char *line = NULL, *arena = NULL;
    size_t cap = 0, arena_cap = 0;
    ssize_t len;
    long line_no = 0;
    while ((len = getline(&line, &cap, stdin)) > 0) {
        line_no++;
        if (arena_cap < (size_t)len + 64) {
            free(arena);
            arena_cap = (size_t)len + 64;
            arena = xmalloc(arena_cap, "input line");
        }
        char err[256];
        if (!json_parse_object(line, (size_t)len, &obj, arena, arena_cap, err, sizeof err))
            die(EXIT_USAGE, "--tokenize: stdin line %ld: %s", line_no, err);
        const JsonMember *text = json_get(&obj, "text"), *special = json_get(&obj, "special"),
                         *bos = json_get(&obj, "bos"), *hex = json_get(&obj, "hex");
        const char *bytes;
        size_t n_bytes;
        char *raw = NULL;
        if (text && text->type == JSON_STRING) {
            bytes = text->str.s;
            n_bytes = text->str.len;
        } else if (hex && hex->type == JSON_STRING) {
            raw = xmalloc(hex->str.len / 2 + 1, "input line");
            if (!unhex(hex->str.s, hex->str.len, raw, &n_bytes))
                die(EXIT_USAGE, "--tokenize: stdin line %ld: \"hex\" is not pairs of lowercase hex digits", line_no);
            bytes = raw;
        } else {
            die(EXIT_USAGE, "--tokenize: stdin line %ld has no \"text\" (or \"hex\") string", line_no);
        }
        int n;
        int *ids = encode(tok, bytes, n_bytes, bos && bos->type == JSON_BOOL && bos->boolean,
                          special && special->type == JSON_BOOL && special->boolean, &n);
        free(raw);
        for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        putchar('\t');
        for (int i = 0; i < n; i++) {
            size_t piece_len;
            const unsigned char *piece = (const unsigned char *)decode(tok, i ? ids[i - 1] : -1, ids[i], &piece_len);
            for (size_t k = 0; k < piece_len; k++) printf("%02x", piece[k]);
        }
        putchar('\n');
        free(ids);
    }
    free(line);
    free(arena);
    if (fflush(stdout) != 0) die(EXIT_INTERNAL, "--tokenize: write failed: %s", strerror(errno));
    return EXIT_OK;
}

int main(int argc, char **argv) {
    Options o = parse_options(argc, argv);
    double started = now_ms();
    Model model;
    build_model(&model, o.checkpoint, o.load);
    const Config *c = &model.config;
    if (o.context > c->seq_len) {
        char msg[128];
        snprintf(msg, sizeof msg, "--context %d exceeds the model's seq_len %d", o.context, c->seq_len);
        usage_error("%s", msg);
    }
    int steps = o.steps == 0 ? c->seq_len : o.steps;
    int context = o.context ? o.context : (steps < c->seq_len ? steps : c->seq_len);
    if (o.keep >= context) {
        char msg[128];
        snprintf(msg, sizeof msg, "--keep %d must be smaller than the context (%d)", o.keep, context);
        usage_error("%s", msg);
    }
    char *tokenizer_path = NULL;
    Tokenizer tok;
    if (model.version == 3) {
        build_tokenizer_v3(&tok, o.checkpoint, model.data + model.meta_offset, model.meta_size, c->vocab_size);
        release_metadata(&model); /* parsed into the tokenizer; its pages need not stay resident */
    } else {
        tokenizer_path = o.tokenizer ? NULL : default_tokenizer(o.checkpoint);
        build_tokenizer(&tok, o.tokenizer ? o.tokenizer : tokenizer_path, c->vocab_size);
    }
    if (o.tokenize) {
        int status = tokenize_lines(&tok);
        free_model(&model);
        free_tokenizer(&tok);
        return status;
    }
    Transformer t;
    /* --dump-logits promises every step's logits: the prompt's run one at a time unless --batch says otherwise */
    int batch = o.batch ? o.batch : o.dump_logits ? 1 : PREFILL_BATCH;
    build_transformer(&t, &model, context, batch, o.threads, o.portable_kernels);

    int status = EXIT_OK;
    if (o.serve) {
        status = serve(&t, &tok, o.checkpoint, now_ms() - started);
    } else {
        int n_prompt;
        int *prompt;
        if (o.prompt_ids) {
            size_t cap = strlen(o.prompt_ids) / 2 + 2;
            prompt = xmalloc(cap * sizeof(int), "prompt tokens");
            n_prompt = parse_prompt_ids(o.prompt_ids, c->vocab_size, prompt, (int)cap);
        } else {
            const char *text = o.prompt ? o.prompt : "";
            prompt = encode(&tok, text, strlen(text), 1, o.special, &n_prompt);
        }
        if (n_prompt == 0) { /* a model without BOS and an empty prompt: start from its end token */
            prompt[0] = tok.bos_id >= 0 ? tok.bos_id : tok.eos_id >= 0 ? tok.eos_id : 0;
            n_prompt = 1;
        }
        generate(&t, &tok, &o, prompt, n_prompt, steps);
        free(prompt);
    }
    free_transformer(&t);
    free_tokenizer(&tok);
    free(tokenizer_path);
    return status;
}
