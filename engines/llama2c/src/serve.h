/* --serve: the storybot engine protocol v1 (docs/engine-protocol.md) on stdin/stdout. */
#ifndef STORYBOT_SERVE_H
#define STORYBOT_SERVE_H

#include "tokenizer.h"
#include "transformer.h"

/* Sends `ready`, serves generate/cancel/shutdown until shutdown or end of input; returns the exit status. */
int serve(Transformer *t, const Tokenizer *tok, const char *model_path, double load_ms);

#endif
