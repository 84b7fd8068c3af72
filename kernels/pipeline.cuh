/*
 * Asynchronous global -> shared copies (cp.async, sm_80+) for the version-2 kernels.
 *
 * A thread issues 16-byte copies, closes them into a group (gs_cp_commit) and later waits until
 * at most N of its newest groups are still in flight (gs_cp_wait<N>); a __syncthreads() after
 * the wait makes every thread's copies visible to the block. Copies bypass L1 (.cg) and carry
 * an L2 eviction priority (gs_l2_policy): the eigenvectors are kept in L2 by launch 1 when they
 * fit, so that launch 2 reads them from L2 instead of memory.
 *
 * The host emulation (kernels/emulate/emu.h) defines GS_EMULATION and its own versions of these
 * functions, which land copies either at issue or only at the wait.
 */
#pragma once

#include <stdint.h>

/* L2 eviction priorities of gs_l2_policy. */
#define GS_L2_NORMAL 0
#define GS_L2_LAST 1  /* keep: the data is read again soon */
#define GS_L2_FIRST 2 /* last use */

#ifndef GS_EMULATION
/* A cache policy for the .L2::cache_hint qualifier. */
__device__ __forceinline__ uint64_t gs_l2_policy(int priority) {
    uint64_t p;
    if (priority == GS_L2_LAST)
        asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
    else if (priority == GS_L2_FIRST)
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
    else
        asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(p));
    return p;
}

/* Copies 16 bytes from global `src` to shared `dst` (both 16-byte aligned); with !valid it
 * writes 16 zero bytes and reads nothing (src-size 0). */
__device__ __forceinline__ void gs_cp16(void *dst, const void *src, bool valid, uint64_t policy) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    const int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;" ::"r"(s), "l"(src), "r"(n),
                 "l"(policy)
                 : "memory");
}

__device__ __forceinline__ void gs_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

/* Waits until at most N of this thread's committed groups are in flight. */
template <int N> __device__ __forceinline__ void gs_cp_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
#endif
