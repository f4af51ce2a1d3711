// The streaming forward pass's thread team: see team.h.
#include "model/team.h"

#include <sched.h>

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif
#define SPIN_BEFORE_YIELD 4096 // pauses (~tens of microseconds) before a waiter yields

void speck_barrier_init(speck_barrier *b) {
    atomic_init(&b->arrived, 0);
    atomic_init(&b->gen, 0);
}

void speck_barrier_wait(speck_barrier *b, int nth) {
    if (nth <= 1) return;
    const int g = atomic_load_explicit(&b->gen, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == nth - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&b->gen, g + 1, memory_order_release);
        return;
    }
    for (unsigned i = 0; atomic_load_explicit(&b->gen, memory_order_acquire) == g; i++) {
        if (i < SPIN_BEFORE_YIELD)
            CPU_RELAX();
        else
            sched_yield();
    }
}

void speck_balance_begin(speck_balancer *b, int nth) {
    if (nth != b->nth || nth > SPECK_BAL_MAX) {
        b->nth = nth <= SPECK_BAL_MAX ? nth : 0;
        for (int t = 0; t < nth && t < SPECK_BAL_MAX; t++) b->speed[t] = 1.0;
    }
    if (!b->nth) return;
    for (int t = 0; t < nth; t++) b->busy[t] = 0;
    double total = 0;
    for (int t = 0; t < nth; t++) total += b->speed[t];
    b->cut[0] = 0;
    for (int t = 0; t < nth; t++) b->cut[t + 1] = b->cut[t] + b->speed[t] / total;
    b->cut[nth] = 1.0;
}

void speck_balance_end(speck_balancer *b) {
    const int nth = b->nth;
    if (nth < 2) return;
    for (int t = 0; t < nth; t++)
        if (b->busy[t] == 0) return;      // a pass too short to measure
    double rate[SPECK_BAL_MAX], mean = 0; // share of the work per tick this pass
    for (int t = 0; t < nth; t++)
        mean += rate[t] = (b->cut[t + 1] - b->cut[t]) / (double)b->busy[t];
    mean /= nth;
    for (int t = 0; t < nth; t++) {
        double v = rate[t] / mean;               // relative speed this pass
        v = v < 0.25 ? 0.25 : v > 4.0 ? 4.0 : v; // ignore descheduling outliers
        b->speed[t] = 0.9 * b->speed[t] + 0.1 * v;
    }
}

void speck_balance_range(const speck_balancer *b, int tid, int nth, int64_t n, int64_t *u0,
                         int64_t *u1) {
    if (b->nth != nth) {
        *u0 = n * tid / nth, *u1 = n * (tid + 1) / nth;
        return;
    }
    *u0 = (int64_t)(b->cut[tid] * (double)n + 0.5);
    *u1 = tid == nth - 1 ? n : (int64_t)(b->cut[tid + 1] * (double)n + 0.5);
}
