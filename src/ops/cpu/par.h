/* When a CPU loop is worth an OpenMP team.
 *
 * Forking and joining a team costs a few microseconds, and much more on a
 * busy machine, where one descheduled thread stalls the barrier for a whole
 * time slice. A loop over fewer than DVL_PAR_MIN units of work (one unit =
 * one simple float operation on one element, about a nanosecond) therefore
 * runs on one thread:
 *
 *     #pragma omp parallel for schedule(static) if (dvl_par(rows * cols))
 *
 * Each loop states its work in those units: elements for pointwise and row
 * loops, weighted by the costs below where one element costs much more.
 * Results never depend on it: every kernel is written so that its output
 * does not depend on the number of threads. */
#ifndef DVL_OPS_CPU_PAR_H
#define DVL_OPS_CPU_PAR_H

#include <stdbool.h>
#include <stdint.h>

#define DVL_PAR_MIN 32768

/* Work units of one element that takes a float exp and the few operations
 * around it (softmax and log-sum-exp rows). */
#define DVL_WORK_EXP 4
/* Work units of one double-precision cos and sin pair. */
#define DVL_WORK_TRIG 16

/* Whether a loop of `work` units should run on a team (the if clause). */
static inline bool dvl_par(int64_t work) { return work >= DVL_PAR_MIN; }

#endif
