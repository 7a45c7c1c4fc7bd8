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
} Options;

static void usage(FILE *out) {
    fprintf(out,
            "Usage: " PROG " CHECKPOINT [options]\n"
            "Runs a llama2.c checkpoint (v0 fp32, v1 fp32, v2 int8) like llama2.c's run, or serves the storybot\n"
            "engine protocol. Example: " PROG " stories15M.bin -n 256 -i \"Once upon a time\"\n"
            "\n"
            "llama2.c options:\n"
            "  -t F          temperature, default 1.0; 0 = greedy\n"
            "  -p F          top-p (nucleus) in [0,1], default 0.9\n"
            "  -s N          random seed, default time-based\n"
            "  -n N          steps (positions incl. the prompt), default 256; 0 = the model's seq_len\n"
            "  -i TEXT       prompt\n"
            "  -z PATH       tokenizer.bin, default beside the checkpoint, else ./tokenizer.bin\n"
            "  -m generate   mode (chat is not supported)\n"
            "storybot options:\n"
            "  -j N                  threads, default 1\n"
            "  --serve               engine protocol v1 on stdin/stdout (docs/engine-protocol.md)\n"
            "  --context N           KV-cache positions, default min(steps, seq_len)\n"
            "  --keep N              tokens kept at the start when the window shifts (default: the prompt)\n"
            "  --load mmap|read      map the checkpoint (default) or read it into memory\n"
            "  --kernels auto|portable   force the plain C kernels\n"
            "  --prompt-ids A,B,C    the prompt as token ids (no BOS added); replaces -i\n"
            "  --dump-logits PATH    append every step's logits (float32, little-endian)\n"
            "  --dump-ids PATH       write every token id of the sequence\n"
            "  -h, --help            this text\n"
            "Exit statuses: 64 usage, 65 malformed checkpoint, 66 missing file, 67 checkpoint size, 68 malformed\n"
            "tokenizer, 69 vocab mismatch, 70 internal, 71 out of memory.\n");
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
    int token = prompt[0], pos = 0;
    while (pos < steps) {
        float *logits = feed(t, &win, token, NULL, NULL);
        if (dump_logits && fwrite(logits, sizeof(float), (size_t)c->vocab_size, dump_logits) != (size_t)c->vocab_size)
            die(EXIT_INTERNAL, "%s: write failed: %s", o->dump_logits, strerror(errno));
        int sampled = pos >= n_prompt - 1;
        int next = sampled ? sample(&sampler, logits, NULL, 0) : prompt[pos + 1];
        pos++;
        if (sampled && (next == 1 || next == 2)) break; /* BOS (as llama2.c) or EOS once generating */
        if (dump_ids) fprintf(dump_ids, " %d", next);
        const char *piece = decode(tok, token, next);
        if (is_printable_piece(piece)) fputs(piece, stdout);
        fflush(stdout);
        token = next;
        if (start == 0) start = now_ms();
    }
    printf("\n");
    fflush(stdout);
    if (pos > 1 && start > 0) {
        double elapsed = now_ms() - start;
        fprintf(stderr, "achieved tok/s: %f\n", elapsed > 0 ? (pos - 1) / elapsed * 1000.0 : 0.0);
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
    char *tokenizer_path = o.tokenizer ? NULL : default_tokenizer(o.checkpoint);
    Tokenizer tok;
    build_tokenizer(&tok, o.tokenizer ? o.tokenizer : tokenizer_path, c->vocab_size);
    Transformer t;
    build_transformer(&t, &model, context, o.threads, o.portable_kernels);

    int status = EXIT_OK;
    if (o.serve) {
        status = serve(&t, &tok, o.checkpoint, now_ms() - started);
    } else {
        const char *text = o.prompt ? o.prompt : "";
        size_t cap = o.prompt_ids ? strlen(o.prompt_ids) / 2 + 2 : strlen(text) + 3;
        int *prompt = xmalloc(cap * sizeof(int), "prompt tokens");
        int n_prompt = o.prompt_ids ? parse_prompt_ids(o.prompt_ids, c->vocab_size, prompt, (int)cap)
                                    : encode(&tok, text, 1, prompt);
        generate(&t, &tok, &o, prompt, n_prompt, steps);
        free(prompt);
    }
    free_transformer(&t);
    free_tokenizer(&tok);
    free(tokenizer_path);
    return status;
}
