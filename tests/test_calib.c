// src/calib/ and the levels view of src/quant/: every block type's levels read and written
// against its dequantizer (bit for bit), and the bit allocation's dynamic program against
// exhaustive enumeration.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "calib/calib.h"
#include "quant/quant.h"
#include "test_util.h"

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return g_rng;
}
static double unif(void) {
    return (double)(rnd() >> 11) / 9007199254740992.0;
}
static float gauss(void) {
    return (float)(sqrt(-2 * log(unif() + 1e-300)) * cos(6.283185307179586 * unif()));
}

// For each block type: rows quantized by speck_quantize (with and without importance weights,
// plus a row with an outlier and a zero row) decode through A * g(L) + B to exactly the
// dequantizer's values; writing the levels read back reproduces the bytes; random levels written
// decode to A * g(L) + B with the scales untouched.
static void test_levels(void) {
    const speck_type types[] = {SPECK_TYPE_Q4_0, SPECK_TYPE_Q4_1, SPECK_TYPE_Q5_0,
                                SPECK_TYPE_Q5_1, SPECK_TYPE_Q8_0, SPECK_TYPE_IQ4_NL,
                                SPECK_TYPE_Q2_K, SPECK_TYPE_Q3_K, SPECK_TYPE_Q4_K,
                                SPECK_TYPE_Q5_K, SPECK_TYPE_Q6_K, SPECK_TYPE_IQ4_XS,
                                SPECK_TYPE_DGQ4};
    enum { N = 1024 };
    static float x[N], imp[N], y[N], A[N], B[N];
    static uint8_t L[N], L2[N], q[N * 2], q2[N * 2];
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const speck_type t = types[ti];
        speck_levels_facts li;
        CHECK(speck_levels_info(t, &li) == 0, "%s: levels facts", speck_type_name(t));
        const size_t rs = speck_type_row_size(t, N);
        bool exact = true, same = true, set_ok = true, in_range = true;
        for (int trial = 0; trial < 4; trial++) {
            for (int j = 0; j < N; j++) {
                x[j] = trial == 3 ? 0.0f : gauss() * 0.1f;
                imp[j] = (float)exp(gauss());
            }
            if (trial == 2) x[77] = 5.0f; // an outlier
            speck_quantize(t, x, q, 1, N, trial == 1 ? imp : NULL);
            speck_dequantize_row(t, q, y, N);
            speck_levels_get(t, q, N, A, B, L);
            for (int j = 0; j < N; j++) {
                const float v = speck_levels_value(&li, A[j], B[j], L[j]);
                exact &= memcmp(&v, &y[j], sizeof v) == 0;
                in_range &= L[j] < li.nlev;
            }
            memcpy(q2, q, rs);
            memset(L2, 0, sizeof L2);
            speck_levels_set(t, q2, N, L2); // wipe, then write back
            speck_levels_set(t, q2, N, L);
            same &= memcmp(q, q2, rs) == 0;
            for (int j = 0; j < N; j++) L2[j] = (uint8_t)(li.lmin + rnd() % (uint64_t)(li.nlev - li.lmin));
            speck_levels_set(t, q2, N, L2);
            speck_dequantize_row(t, q2, y, N);
            for (int j = 0; j < N; j++) {
                const float v = speck_levels_value(&li, A[j], B[j], L2[j]);
                set_ok &= memcmp(&v, &y[j], sizeof v) == 0;
            }
        }
        CHECK(exact, "%s: A * g(L) + B is the dequantizer's value bit for bit", speck_type_name(t));
        CHECK(in_range, "%s: levels below %d", speck_type_name(t), li.nlev);
        CHECK(same, "%s: writing the levels read back gives the same bytes", speck_type_name(t));
        CHECK(set_ok, "%s: random levels written decode to A * g(L) + B", speck_type_name(t));
    }
    speck_levels_facts li;
    CHECK(speck_levels_info(SPECK_TYPE_F16, &li) == -1, "f16 has no levels");
}

// Exhaustive search of the same problem: the least cost with every size (rounded up to units)
// summing within the budget.
static double brute(int n, int k, const double *cost, const int64_t *size, int64_t budget,
                    int64_t unit) {
    double best = INFINITY;
    int64_t combos = 1;
    for (int i = 0; i < n; i++) combos *= k;
    for (int64_t m = 0; m < combos; m++) {
        int64_t mm = m, units = 0;
        double c = 0;
        for (int i = 0; i < n; i++, mm /= k) {
            const int o = (int)(mm % k);
            c += cost[i * k + o];
            units += (size[i * k + o] + unit - 1) / unit;
        }
        if (units <= budget / unit && c < best) best = c;
    }
    return best;
}

static void test_alloc(void) {
    enum { NI = 6, NO = 4 };
    double cost[NI * NO];
    int64_t size[NI * NO];
    int choice[NI];
    int optimal = 0, within = 0, trials = 200;
    for (int t = 0; t < trials; t++) {
        for (int i = 0; i < NI; i++)
            for (int o = 0; o < NO; o++) {
                // Larger options cost less, like more bits; with random gaps.
                size[i * NO + o] = 10 + (int64_t)(rnd() % 50) + 40 * o;
                cost[i * NO + o] = (NO - o) * (1 + unif()) + unif();
            }
        const int64_t budget = 6 * 10 + (int64_t)(rnd() % 600);
        const int64_t unit = t % 2 ? 1 : 7;
        const double want = brute(NI, NO, cost, size, budget, unit);
        const int rc = speck_alloc_solve(NI, NO, cost, size, budget, unit, choice);
        if (!isfinite(want)) {
            within += rc != 0;
            optimal += rc != 0;
            continue;
        }
        double c = 0;
        int64_t used = 0;
        for (int i = 0; i < NI; i++) c += cost[i * NO + choice[i]], used += size[i * NO + choice[i]];
        within += rc == 0 && used <= budget;
        optimal += rc == 0 && fabs(c - want) < 1e-12;
    }
    CHECK(within == trials, "alloc: every solution within its budget (%d of %d)", within, trials);
    CHECK(optimal == trials, "alloc: the exhaustive optimum every time (%d of %d)", optimal,
          trials);
    // An option of infinite cost is never chosen; an impossible budget is an error.
    const double c2[4] = {INFINITY, 1, 0, 5};
    const int64_t s2[4] = {1, 10, 100, 1};
    int ch[2];
    CHECK(speck_alloc_solve(2, 2, c2, s2, 12, 1, ch) == 0 && ch[0] == 1 && ch[1] == 1,
          "alloc: infinite-cost options skipped (%d %d)", ch[0], ch[1]);
    CHECK(speck_alloc_solve(2, 2, c2, s2, 5, 1, ch) == SPECK_ERR_ARG, "alloc: impossible budget");
}

int main(void) {
    test_levels();
    test_alloc();
    return test_summary();
}
