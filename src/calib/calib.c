// Calibrated quantization for speck_gguf_quantize: GPTQ rounding and bit allocation, from
// calibration tokens run through the source model (quant_plan.h).
#include "formats/quant_plan.h"

int quant_plan_calibrate(const speck_gguf *g, const char *path, const speck_quantize_opts *o,
                         quant_plan *plan, bool progress) {
    (void)g, (void)o, (void)plan, (void)progress;
    return speck_set_error(SPECK_ERR_UNSUPPORTED, "%s: calibrated methods are not built yet",
                           path);
}
