// The thread team of the streaming forward pass (src/model/llama.c): a spinning barrier, and
// static work splits balanced by each thread's measured speed.
#ifndef SPECK_MODEL_TEAM_H
#define SPECK_MODEL_TEAM_H

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

// A cheap timestamp for the balancer (units cancel: only ratios are used).
static inline uint64_t speck_ticks(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
#endif
}

// A barrier for a team of threads that spins instead of sleeping. libgomp's barrier ends with a
// futex wake system call even when the other threads are spinning: ~1.5 us per barrier on this
// project's VM (paravirtualised syscalls), and a decode step of a 4-layer model passes 21 of
// them. The counters sit on separate cache lines.
typedef struct {
    atomic_int arrived;
    char pad[64 - sizeof(atomic_int)];
    atomic_int gen;
} speck_barrier;

void speck_barrier_init(speck_barrier *b);
// Every thread of the team calls this; returns when all nth have. The arrivals' writes happen
// before every thread's return (acq_rel count, release/acquire generation). Waiters spin on the
// generation, yielding the CPU after a while so that a descheduled peer can run.
void speck_barrier_wait(speck_barrier *b, int nth);

// Static splits of work weighted by each thread's measured speed. On this project's VM one core
// runs the same work ~30 % slower than the other (whichever thread is placed on it, and which
// one changes from minute to minute), so even splits left the fast thread waiting at every
// barrier. Each pass times every thread's work and moves the shares towards equal finish times
// (an exponential average, so splits stay stable and each core keeps its rows cached).
#define SPECK_BAL_MAX 64 // threads balanced; more share evenly
typedef struct {
    int nth;                       // team size the estimates are for (0: none yet)
    double speed[SPECK_BAL_MAX];   // work per tick, relative
    double cut[SPECK_BAL_MAX + 1]; // thread t's share is [cut[t], cut[t + 1]) of [0, 1]
    uint64_t busy[SPECK_BAL_MAX];  // this pass: ticks each thread spent on its shares
} speck_balancer;

// Prepares the cuts for a pass with nth threads (before the parallel region).
void speck_balance_begin(speck_balancer *b, int nth);
// After a pass, with busy[] filled in: new speed estimates.
void speck_balance_end(speck_balancer *b);
// Thread tid's range [*u0, *u1) of n units under the cuts (an even split without estimates).
void speck_balance_range(const speck_balancer *b, int tid, int nth, int64_t n, int64_t *u0,
                         int64_t *u1);

#endif
