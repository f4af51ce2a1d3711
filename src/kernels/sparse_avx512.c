// S24_Q8 rows on AVX-512 VNNI (+BMI2): sparse_rows.h with vpdpbusd.
#define S24_DOT4(w, a) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (w), (a))
#include "kernels/sparse_rows.h"

S24_DEFINE_MM(speck_mm_s24_q8_avx512)
