// Host stand-ins for the CUDA built-ins kernels/skip.cu uses, so the kernels compile with g++
// and run on the CPU: a block is 128 std::threads, __shared__ a function-level static (blocks run
// one after another), atomics and fences the C++ ones.
//
// Threads of a block run ONE AT A TIME: between two barriers each thread runs alone, in an order
// chosen per phase (reverse, forward or seeded shuffle, see Order). A thread that reads shared
// memory another thread has not written yet therefore reads stale data deterministically, so a
// missing __syncthreads() changes the result instead of passing by luck. Warp-collective WMMA is
// emulated per lane (mma.h), which is exact under this schedule.
//
// This checks indexing, tiling, split-K, scaling, weights and epilogue logic and barrier
// placement; it does not model the GPU memory model, alignment faults or timing. Used by
// main.cpp (see there).
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <random>
#include <semaphore>
#include <thread>
#include <vector>
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 gridDim, blockDim;

// How the threads of a block are ordered within each phase.
enum class Order { Reverse, Forward, Shuffle };

// Runs the threads of one block one at a time, handing over at barriers and at exit. Each
// thread sleeps on its own semaphore, so a hand-over wakes exactly the next thread.
class Serial {
  public:
    Serial(unsigned n, Order order, uint64_t seed) : order_(order), rng_(seed) {
        for (unsigned t = 0; t < n; ++t) {
            gate_.push_back(std::make_unique<std::binary_semaphore>(0));
            waiting_.push_back(t);
        }
        next_phase();
        gate_[run_[0]]->release();
    }
    // Blocks until it is thread t's turn.
    void enter(unsigned t) { gate_[t]->acquire(); }
    // Thread t reached a barrier: hand over, wait for the next phase and its turn.
    void barrier(unsigned t) {
        waiting_.push_back(t);
        advance();
        gate_[t]->acquire();
    }
    // Thread t returned from the kernel.
    void leave(unsigned) { advance(); }

  private:
    // Only the running thread calls this, so the bookkeeping needs no lock: the semaphores
    // order it with the next thread's reads.
    void advance() {
        if (++pos_ == run_.size()) next_phase();
        if (pos_ < run_.size()) gate_[run_[pos_]]->release();
    }
    void next_phase() {
        run_.swap(waiting_);
        waiting_.clear();
        std::sort(run_.begin(), run_.end());
        if (order_ == Order::Reverse) std::reverse(run_.begin(), run_.end());
        if (order_ == Order::Shuffle) std::shuffle(run_.begin(), run_.end(), rng_);
        pos_ = 0;
    }
    std::vector<std::unique_ptr<std::binary_semaphore>> gate_;
    std::vector<unsigned> run_, waiting_;
    size_t pos_ = 0;
    Order order_;
    std::mt19937_64 rng_;
};
inline Serial *g_serial;

// CUDA's host_defines.h (pulled in by cuda_fp16.h) gives these attribute meanings g++ lacks.
#undef __global__
#undef __launch_bounds__
#undef __grid_constant__
#undef __shared__
#define __global__
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static
inline void __syncthreads() { g_serial->barrier(threadIdx.x); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <class T> T __ldg(const T *p) { return *p; }
template <class T> T __ldcg(const T *p) { return *p; }
template <class T> void __stcg(T *p, T v) { *p = v; }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicMax(unsigned *p, unsigned v) { unsigned o = *p; *p = std::max(o, v); return o; }
inline int atomicMax(int *p, int v) { int o = *p; *p = std::max(o, v); return o; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
using std::isfinite;
using std::min;
using std::sqrt;

// Version 2's dynamic shared memory (blocks run one after another, so one buffer serves all;
// launch() poisons it with NaN bytes before each block) and cp.async (kernels/pipeline.cuh).
#define GS_EMULATION 1
#undef __constant__
#define __constant__
alignas(128) inline unsigned char gs_emu_smem[227 * 1024];

// A cp.async copy lands either at issue (Landing::Eager) or only when a wait retires its group
// (Landing::Late), chosen per launch: a missing or too shallow wait, or a missing barrier after
// it, reads a stage that has not landed in the late mode; a stage overwritten while other
// threads still read it shows in the eager mode. Misaligned copies abort, as they fault on a GPU.
enum class Landing { Eager, Late };
inline Landing g_landing = Landing::Eager;
struct EmuCopy { void *dst; const void *src; bool valid; };
inline thread_local std::vector<EmuCopy> emu_open;                // issued, not committed
inline thread_local std::deque<std::vector<EmuCopy>> emu_groups;  // committed, not landed
inline void emu_land(const EmuCopy &c) {
    if (c.valid) std::memcpy(c.dst, c.src, 16);
    else std::memset(c.dst, 0, 16);
}
inline uint64_t gs_l2_policy(int) { return 0; }
inline void gs_cp16(void *dst, const void *src, bool valid, uint64_t) {
    if (reinterpret_cast<uintptr_t>(dst) % 16 || (valid && reinterpret_cast<uintptr_t>(src) % 16)) {
        std::fprintf(stderr, "misaligned cp.async (%p <- %p)\n", dst, src);
        std::abort();
    }
    const EmuCopy c{dst, src, valid};
    if (g_landing == Landing::Eager) emu_land(c);
    else emu_open.push_back(c);
}
inline void gs_cp_commit() {
    emu_groups.push_back(std::move(emu_open));
    emu_open.clear();
}
template <int N> void gs_cp_wait() {
    while (emu_groups.size() > size_t(N)) {
        for (const EmuCopy &c : emu_groups.front()) emu_land(c);
        emu_groups.pop_front();
    }
}
