// Calibration internals shared by src/calib/ and speck_gguf_quantize: GPTQ, Hessians, bit
// allocation.
#ifndef SPECK_CALIB_H
#define SPECK_CALIB_H

#include <stdbool.h>
#include <stdint.h>

#include "speck.h"

// GPTQ-round W (rows, cols) into type t (rows of speck_type_row_size(t, cols) bytes in out)
// under H (cols, cols), the sum over calibration tokens of x x^T of the matrix's input. damp:
// added to the diagonal as a fraction of its mean (GPTQ's 0.01). weighted: the block scale
// searches weight column j by H[j][j] (the imatrix's measure); otherwise they run unweighted.
// W is not modified.
int speck_gptq(speck_type t, const float *W, int64_t rows, int64_t cols, const double *H,
               double damp, bool weighted, void *out);

// A (n, n) row-major, a damped Hessian H, is overwritten with U, upper triangular, H^-1 = U^T U
// (the factor GPTQ and SparseGPT feed errors forward with). 0, or -1 when H is not positive
// definite.
int calib_inverse_cholesky(double *A, int n);

// Log-softmax in place: x holds rows rows of n logits.
void calib_log_softmax_rows(float *x, int rows, int n);

// Sum over rows of KL(base || model), base and logp each (rows, n) log-probabilities: the
// divergence both bit allocation and pruning allocation minimise.
double calib_kld_rows(const float *base, const float *logp, int rows, int n);

// Choose one option per item to minimize the summed cost with the summed size <= budget:
// cost, size: (n_items, n_opt) row-major, size >= 0; an option with cost INFINITY is never
// chosen. Exact dynamic programming over sizes in units of `unit` bytes (sizes rounded up, so
// the budget holds exactly). choice: (n_items) out. Returns 0, or SPECK_ERR_ARG when even the
// smallest options exceed the budget.
int speck_alloc_solve(int n_items, int n_opt, const double *cost, const int64_t *size,
                      int64_t budget, int64_t unit, int *choice);

// Tensor t (any readable type) as a malloc'd (rows, ne[0]) float matrix, or NULL when out of
// memory.
float *calib_tensor_f32(const speck_gguf_tensor *t);

// The name of the input a weight reads ("blk.3.attn_in" for q, k and v; "blk.3.ffn_in" for gate
// and up; the weight's own name otherwise): matrices with one key share a Hessian.
void calib_input_key(const char *weight, char *key, size_t size);
// H[i] (n_in[i] x n_in[i]) = the sum over the calibration tokens (opts->calib, in windows of
// opts->calib_ctx) of x x^T for the input named keys[i], from the model at model_path;
// tokens[i]: how many tokens it summed (0: no matrix product reads that input).
int calib_hessians(const char *model_path, const speck_quantize_opts *o, const char **keys,
                   const int *n_in, int n_keys, double **H, int64_t *tokens, bool progress);
// The same from a loaded model m over n_tok tokens in windows of ctx (whole windows only, each
// from an empty cache); CorDA's covariances (src/adapt/corda.c) come from here too.
int calib_hessians_model(const speck_model *m, const int32_t *tok, int64_t n_tok, int ctx,
                         const char **keys, const int *n_in, int n_keys, double **H,
                         int64_t *tokens, bool progress);
// Bit allocation (src/calib/alloc_plan.c): rewrite plan[].type of the converted matrices to
// the mix of candidate types that minimizes the measured loss at o->target_bpw.
int calib_allocate(const speck_gguf *g, const char *model_path, const speck_quantize_opts *o,
                   void *plan, bool progress);

// --method recon (src/calib/recon.c): the converted matrices quantized in forward order, each
// retargeted to reproduce the unquantized model's output from the quantized model's inputs and
// GPTQ-rounded; fills plan[].data.
int calib_recon(const speck_gguf *g, const char *path, const speck_quantize_opts *o, void *plan,
                bool progress);

#endif
