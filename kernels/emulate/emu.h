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
#include <cstring>
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
inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicMax(unsigned *p, unsigned v) { unsigned o = *p; *p = std::max(o, v); return o; }
inline int atomicMax(int *p, int v) { int o = *p; *p = std::max(o, v); return o; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
using std::isfinite;
using std::min;
using std::sqrt;
