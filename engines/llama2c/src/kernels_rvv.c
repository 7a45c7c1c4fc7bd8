/* RVV 1.0 kernels (riscv64 with V). Placeholder until written. */
#include "kernels.h"
#if defined(HAVE_KERNELS_RVV)
#error "RVV kernels not written yet"
#else
typedef int kernels_rvv_unused; /* ISO C forbids an empty translation unit */
#endif
