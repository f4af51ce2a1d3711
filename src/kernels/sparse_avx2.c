// S24_Q8 rows on AVX2 (+BMI2): sparse_rows.h with maddubs + madd (pairs of |w| <= 128 times
// |a| <= 127 stay below maddubs' int16 saturation, so the sums are the exact ones).
#define S24_DOT4(w, a) _mm256_madd_epi16(_mm256_maddubs_epi16((w), (a)), _mm256_set1_epi16(1))
#include "kernels/sparse_rows.h"

S24_DEFINE_MM(speck_mm_s24_q8_avx2)
