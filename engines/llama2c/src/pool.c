#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "common.h"

#define SPINS_BEFORE_SLEEP 20000

struct Pool {
    int n_threads;             /* including the caller */
    pthread_t *threads;        /* (n_threads - 1,) */
    PoolTask task;
    void *arg;
    atomic_uint generation;    /* bumped once per task */
    atomic_int unfinished;     /* workers still running the current task */
    atomic_int sleepers;       /* workers blocked on `wake` */
    atomic_int stopping;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

typedef struct {
    Pool *pool;
    int index;
} WorkerArg;

static void *worker_main(void *p) {
    WorkerArg *wa = p;
    Pool *pool = wa->pool;
    int index = wa->index;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen) {
            if (++spins < SPINS_BEFORE_SLEEP) continue;
            pthread_mutex_lock(&pool->lock);
            atomic_fetch_add(&pool->sleepers, 1);
            while (atomic_load(&pool->generation) == seen) pthread_cond_wait(&pool->wake, &pool->lock);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->lock);
        }
        seen = gen;
        if (atomic_load(&pool->stopping)) return NULL;
        pool->task(pool->arg, index, pool->n_threads);
        atomic_fetch_sub_explicit(&pool->unfinished, 1, memory_order_release);
    }
}

Pool *build_pool(int n_threads) {
    if (n_threads <= 1) return NULL;
    Pool *pool = xcalloc(1, sizeof *pool, "thread pool");
    pool->n_threads = n_threads;
    pool->threads = xcalloc((size_t)n_threads - 1, sizeof(pthread_t), "thread pool");
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    for (int i = 1; i < n_threads; i++) {
        WorkerArg *wa = xmalloc(sizeof *wa, "thread pool");
        *wa = (WorkerArg){pool, i};
        if (pthread_create(&pool->threads[i - 1], NULL, worker_main, wa) != 0)
            die(EXIT_NO_MEMORY, "cannot start worker thread %d of %d", i, n_threads - 1);
    }
    return pool;
}

static void publish(Pool *pool) {
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    if (atomic_load(&pool->sleepers) > 0) { /* a worker that checks under the lock sees the new generation */
        pthread_mutex_lock(&pool->lock);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
    }
}

void pool_run(Pool *pool, PoolTask task, void *arg) {
    if (!pool) {
        task(arg, 0, 1);
        return;
    }
    pool->task = task;
    pool->arg = arg;
    atomic_store(&pool->unfinished, pool->n_threads - 1);
    publish(pool);
    task(arg, 0, pool->n_threads);
    int spins = 0;
    while (atomic_load_explicit(&pool->unfinished, memory_order_acquire) > 0)
        if (++spins > SPINS_BEFORE_SLEEP) sched_yield();
}

int pool_size(const Pool *pool) { return pool ? pool->n_threads : 1; }

void free_pool(Pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stopping, 1);
    publish(pool);
    for (int i = 0; i < pool->n_threads - 1; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}
