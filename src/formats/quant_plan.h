// The per-tensor plan of speck_gguf_quantize: which type each tensor gets and, for calibrated
// methods (GPTQ, bit allocation), its bytes computed ahead of the write.
#ifndef SPECK_QUANT_PLAN_H
#define SPECK_QUANT_PLAN_H

#include "speck.h"

typedef struct {
    int type;   // what the tensor is written as
    int wanted; // what the mix / options asked for (type differs when the block did not fit)
    void *data; // malloc'd rows of `type` made by calibration, or NULL: quantize while writing
} quant_plan;

// The file's facts the mixes depend on.
int quant_mix_info(const speck_gguf *g, bool has_imatrix, speck_mix_info *mi);
// The type the options ask for tensor t (its own type when it is not converted).
int quant_wanted_type(const speck_gguf_tensor *t, const speck_quantize_opts *o,
                      const speck_mix_info *mi);
// plan[i] for every tensor of g: wanted and, after the block fallback, type.
int quant_plan_build(const speck_gguf *g, const char *path, const speck_quantize_opts *o,
                     quant_plan *plan);
// Calibrated methods (src/calib/): bit allocation (o->target_bpw) rewrites plan[].type, GPTQ
// fills plan[].data, from the calibration tokens run through the model in g.
int quant_plan_calibrate(const speck_gguf *g, const char *path, const speck_quantize_opts *o,
                         quant_plan *plan, bool progress);

#endif
