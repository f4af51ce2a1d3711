// Online logit distillation (SpecVLM-style draft training): the student learns the teacher's
// next-token distributions, the teacher run forward (no gradient) on the same batch.
//
// Per position i with a target (targets[i] >= 0), z_t / z_s the teacher's / student's logits
// (V), temperature T, p = softmax(z_t / T), q = softmax(z_s / T), r = softmax(z_s):
//   KL_i = Σ_j p_j (log p_j - log q_j)                 (KL(p || q), the forward KL)
//   CE_i = -log r[target_i]
//   L    = mean_i [ (1 - w) T² KL_i + w CE_i ]
//   dL/dz_s,j = (1/n) [ (1 - w) T (q_j - p_j) + w (r_j - onehot_j) ]
// T² keeps the KL term's gradient at the size of the CE term's as T grows (Hinton et al.):
// d(T² KL)/dz_s = T (q - p).
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/simd_math.h"
#include "train/train_internal.h"
#include "train/train_ops.h"

int speck_distill_check(const speck_train_model *student, const speck_train_model *teacher) {
    if (!student || !teacher)
        return speck_set_error(SPECK_ERR_ARG, "distill: student and teacher are required");
    if (student->cfg.n_vocab != teacher->cfg.n_vocab)
        return speck_set_error(SPECK_ERR_ARG,
                               "distill: vocabularies differ: the teacher has %d tokens, the "
                               "student %d (distillation compares distributions over the same "
                               "tokens)",
                               teacher->cfg.n_vocab, student->cfg.n_vocab);
    return 0;
}

// e[j] = exp(z[j] * inv_t - max) for one row; returns the max, *sum gets Σ e (in double,
// 16 lanes combined in a fixed order, as speck_sum_sq).
SPECK_MULTIVERSION
static float exp_row(float *e, const float *z, int V, float inv_t, double *sum) {
    float m = z[0];
    for (int j = 1; j < V; j++) m = z[j] > m ? z[j] : m;
    m *= inv_t; // inv_t > 0: the max of the scaled row
    double acc[16] = {0};
    int j = 0;
    for (; j + 16 <= V; j += 16)
        for (int k = 0; k < 16; k++) {
            e[j + k] = speck_exp_poly(z[j + k] * inv_t - m);
            acc[k] += e[j + k];
        }
    for (; j < V; j++) {
        e[j] = speck_exp_poly(z[j] * inv_t - m);
        acc[j % 16] += e[j];
    }
    for (int k = 0; k < 8; k++) acc[k] += acc[k + 8];
    for (int k = 0; k < 4; k++) acc[k] += acc[k + 4];
    *sum = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    return m;
}

// One row: s (V) student logits -> dL/dz_s * scale; t (V) teacher logits; e: (3V) scratch.
// Returns KL(p || q) of the row; *ce gets -log r[target].
SPECK_MULTIVERSION
static double distill_row(float *s, const float *t, int target, int V, float temp, float w,
                          float scale, float *e, double *ce) {
    const float inv_t = 1.0f / temp;
    float *et = e, *es = e + V, *e1 = e + 2 * (size_t)V;
    double st, ss, s1;
    const float mt = exp_row(et, t, V, inv_t, &st), ms = exp_row(es, s, V, inv_t, &ss);
    float m1 = ms;
    if (temp == 1.0f)
        e1 = es, s1 = ss;
    else
        m1 = exp_row(e1, s, V, 1.0f, &s1);
    // the text cross-entropy, reported whatever w is
    *ce = -((double)s[target] - m1 - log(s1));
    const float ct = mt + (float)log(st), cs = ms + (float)log(ss); // log-normalisers
    const float it = (float)(1.0 / st), is = (float)(1.0 / ss), i1 = (float)(1.0 / s1);
    const float a = scale * (1.0f - w) * temp, b = scale * w;
    double acc[16] = {0};
    int j = 0;
    for (; j + 16 <= V; j += 16)
        for (int k = 0; k < 16; k++) {
            const float p = et[j + k] * it, q = es[j + k] * is;
            const float lp = t[j + k] * inv_t - ct, lq = s[j + k] * inv_t - cs;
            acc[k] += p * (lp - lq);
            s[j + k] = a * (q - p) + b * (e1[j + k] * i1);
        }
    for (; j < V; j++) {
        const float p = et[j] * it, q = es[j] * is;
        const float lp = t[j] * inv_t - ct, lq = s[j] * inv_t - cs;
        acc[j % 16] += p * (lp - lq);
        s[j] = a * (q - p) + b * (e1[j] * i1);
    }
    s[target] -= b;
    for (int k = 0; k < 8; k++) acc[k] += acc[k + 8];
    for (int k = 0; k < 4; k++) acc[k] += acc[k + 4];
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

// zs: (N, V) student logits -> dL/dz_s in place (rows without a target: 0); zt: (N, V) teacher
// logits, read only. *kl_sum and *ce_sum get Σ KL_i and Σ CE_i over the rows with a target.
static int distill_loss(float *zs, const float *zt, const int32_t *tg, int N, int V, float temp,
                        float w, float scale, double *kl_sum, double *ce_sum) {
    double kl_tot = 0, ce_tot = 0;
    int oom = 0;
#pragma omp parallel reduction(+ : kl_tot, ce_tot, oom)
    {
        float *e = malloc(3 * (size_t)V * sizeof *e);
        if (!e) oom = 1;
#pragma omp for schedule(static)
        for (int i = 0; i < N; i++) {
            float *s = zs + (size_t)i * V;
            if (tg[i] < 0 || !e) {
                memset(s, 0, (size_t)V * sizeof *s);
                continue;
            }
            double ce;
            kl_tot += distill_row(s, zt + (size_t)i * V, tg[i], V, temp, w, scale, e, &ce);
            ce_tot += ce;
        }
        free(e);
    }
    *kl_sum = kl_tot, *ce_sum = ce_tot;
    return oom ? speck_set_error(SPECK_ERR_NOMEM, "distill: out of memory") : 0;
}

int speck_distill_step(speck_train_model *student, speck_train_model *teacher,
                       const int32_t *inputs, const int32_t *targets, int B, int T,
                       const speck_distill_params *p, float grad_scale, float *loss, float *kl,
                       float *ce) {
    int err = speck_distill_check(student, teacher);
    if (err) return err;
    if (!(p->temperature > 0) || !isfinite(p->temperature))
        return speck_set_error(SPECK_ERR_ARG, "distill: temperature %g must be > 0",
                               (double)p->temperature);
    if (!(p->ce_weight >= 0 && p->ce_weight <= 1))
        return speck_set_error(SPECK_ERR_ARG, "distill: text cross-entropy weight %g not in [0, 1]",
                               (double)p->ce_weight);
    const int N = B * T, V = student->cfg.n_vocab;
    for (int i = 0; i < N; i++)
        if (targets[i] < -1 || targets[i] >= V)
            return speck_set_error(SPECK_ERR_RANGE,
                                   "distill: target id %d at %d out of range [0, %d)", targets[i],
                                   i, V);
    // Teacher first (its logits stay in its own activations), then the student.
    char why[512];
    const float *zt = train_forward_logits(teacher, inputs, B, T);
    if (!zt) {
        snprintf(why, sizeof why, "%s", speck_last_error());
        return speck_set_error(SPECK_ERR_ARG, "distill: teacher: %s", why);
    }
    float *zs = train_forward_logits(student, inputs, B, T);
    if (!zs) {
        snprintf(why, sizeof why, "%s", speck_last_error());
        return speck_set_error(SPECK_ERR_ARG, "distill: student: %s", why);
    }
    int nv = 0;
    for (int i = 0; i < N; i++) nv += targets[i] >= 0;
    double kl_sum = 0, ce_sum = 0;
    err = distill_loss(zs, zt, targets, N, V, p->temperature, p->ce_weight,
                       nv ? grad_scale / (float)nv : 0.0f, &kl_sum, &ce_sum);
    if (err) return err;
    train_backward_logits(student, inputs, B, T);
    const double t2 = (double)p->temperature * p->temperature;
    const double kl_mean = nv ? kl_sum / nv : 0, ce_mean = nv ? ce_sum / nv : 0;
    if (loss) *loss = (float)((1.0 - p->ce_weight) * t2 * kl_mean + p->ce_weight * ce_mean);
    if (kl) *kl = (float)kl_mean;
    if (ce) *ce = (float)ce_mean;
    return 0;
}
