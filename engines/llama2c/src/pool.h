/* A fixed pool of worker threads, created once. pool_run() hands the same task to every thread (the caller
 * is thread 0) and returns when all have finished it. Workers spin briefly between tasks (a token is ~40
 * short matmuls, too short for a condition-variable wake-up each time), then sleep. */
#ifndef STORYBOT_POOL_H
#define STORYBOT_POOL_H

typedef void (*PoolTask)(void *arg, int thread, int n_threads);

typedef struct Pool Pool;

/* NULL when n_threads <= 1: pool_run then calls the task directly. Exits 71 if threads cannot start. */
Pool *build_pool(int n_threads);
void free_pool(Pool *pool);
void pool_run(Pool *pool, PoolTask task, void *arg);
int pool_size(const Pool *pool);

#endif
