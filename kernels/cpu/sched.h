/* kernels/cpu/sched.h — chunking of the streaming kernels' OpenMP loops.
 *
 * Promise: nc_dyn_chunk(n, lo, hi) is the chunk (in loop iterations) for `schedule(dynamic, c)`
 * over n iterations: about 8 chunks per thread, clamped to [lo, hi]. The elementwise, softmax and
 * RMSNorm loops hand out work this way instead of one static block per thread: every element (row)
 * is computed independently, so results are the same bits for any schedule, and when another job
 * takes a core for a while the other threads take over the rest instead of waiting at the end (a
 * static split runs at the speed of its slowest thread). Chunks stay large (the callers pass
 * about 64-256 KiB of data as hi) so the dynamic hand-out costs one atomic per chunk.
 */
#ifndef NC_SCHED_H
#define NC_SCHED_H
#include <stdint.h>
int32_t nc_threads(void);
static inline int64_t nc_dyn_chunk(int64_t n, int64_t lo, int64_t hi) {
    int64_t c = n / (8 * (int64_t)nc_threads());
    return c < lo ? lo : c > hi ? hi : c;
}
#endif
