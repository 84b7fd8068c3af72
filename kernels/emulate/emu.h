// Host stand-ins for the CUDA built-ins kernels/skip.cu uses, so the kernels compile with g++
// and run on the CPU: a block is 128 std::threads, __syncthreads a std::barrier, __shared__
// a function-level static (blocks run one after another), atomics and fences the C++ ones.
// This checks indexing, tiling, split-K, weights and epilogue logic; it does not model the
// GPU memory model, alignment faults or timing. Used by main.cpp (see there).
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 gridDim, blockDim;
inline std::barrier<> *g_bar;
// CUDA's host_defines.h (pulled in by cuda_fp16.h) gives these attribute meanings g++ lacks.
#undef __global__
#undef __launch_bounds__
#undef __grid_constant__
#undef __shared__
#define __global__
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static
inline void __syncthreads() { g_bar->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <class T> T __ldg(const T *p) { return *p; }
template <class T> T __ldcg(const T *p) { return *p; }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
using std::min;
using std::sqrt;
