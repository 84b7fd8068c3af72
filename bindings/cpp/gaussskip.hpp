// gaussskip.hpp: a small header-only C++17 wrapper over the gaussskip C ABI (gaussskip.h).
//
//   gaussskip::Model model = gaussskip::Model::load("model.safetensors");
//   gaussskip::Context ctx(gaussskip::Device::Cpu);
//   ctx.skip(model, x, out, batch, gaussskip::edm(80.0), gaussskip::edm(2.5));
//
// - Model and Context own their handle and are move-only; a moved-from object holds NULL and
//   every call through it fails with GS_ERR_NULL_POINTER (as the C ABI does).
// - Every failing call throws gaussskip::Error carrying the gs_status and the library's
//   detailed message (gs_last_error_message() of the calling thread).
// - Buffers are pointer + row count (`batch x dim` elements, trajectories `n_levels` times
//   more), or std::span<float> under C++20, where the sizes are checked before the call.
//   f16/bf16 buffers go through the overloads taking a Dtype and untyped pointers.
// - Thread safety is the C ABI's: a Model may be shared; error text is per thread.
// Link with -lgaussskip.

#ifndef GAUSSSKIP_HPP
#define GAUSSSKIP_HPP

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#if __cplusplus >= 202002L
#include <span>
#endif

#include "gaussskip.h"

namespace gaussskip {

/// A failed call: the C status and the library's message.
class Error : public std::runtime_error {
public:
    Error(gs_status status, const std::string &detail)
        : std::runtime_error(std::string(gs_status_message(status)) + ": " + detail),
          status_(status) {}

    /// The status the C call returned (never GS_OK).
    gs_status status() const noexcept { return status_; }

private:
    gs_status status_;
};

/// Throws Error for any status other than GS_OK, with this thread's detailed message.
inline void check(gs_status status) {
    if (status != GS_OK) {
        throw Error(status, gs_last_error_message());
    }
}

/// Element types of input and output buffers (the GS_DTYPE_* codes).
enum class Dtype : std::uint32_t { F32 = GS_DTYPE_F32, F16 = GS_DTYPE_F16, BF16 = GS_DTYPE_BF16 };

/// Devices a Context can run on (the GS_DEVICE_* codes).
enum class Device : std::uint32_t {
    Auto = GS_DEVICE_AUTO,
    Cpu = GS_DEVICE_CPU,
    Cuda = GS_DEVICE_CUDA,
};

/// A noise level: x_t = alpha * x0 + sigma * eps.
using Noise = gs_noise;

/// EDM / VE level (alpha = 1).
inline Noise edm(double sigma) noexcept { return gs_noise_edm(sigma); }
/// VP level from alpha_bar.
inline Noise vp(double alpha_bar) noexcept { return gs_noise_vp(alpha_bar); }
/// Flow-matching level at time t.
inline Noise flow(double t) noexcept { return gs_noise_flow(t); }

/// Library version string, e.g. "0.1.0".
inline std::string version() { return gs_version(); }

/// True when the loaded library implements the ABI this header was written against.
inline bool abi_compatible() noexcept { return gs_abi_version() == GS_ABI_VERSION; }

/// An immutable Gaussian model (owns a gs_model*).
class Model {
public:
    /// Takes ownership of a handle from the C ABI (may be NULL).
    explicit Model(gs_model *handle) noexcept : handle_(handle) {}

    /// Loads and validates a model file. Throws Error (GS_ERR_IO, GS_ERR_FILE_FORMAT, ...).
    static Model load(const std::string &path) {
        gs_model *m = nullptr;
        check(gs_model_load(path.c_str(), &m));
        return Model(m);
    }

    /// Builds a model from host arrays (copied): mean[dim], eigvals[rank] (non-increasing,
    /// >= 0), eigvecs[rank * dim] (row k = unit eigenvector k). Throws Error
    /// (GS_ERR_INVALID_MODEL, GS_ERR_INVALID_ARGUMENT, ...).
    static Model from_parts(std::size_t dim, std::size_t rank, const float *mean,
                            const float *eigvals, const float *eigvecs, float residual_var) {
        gs_model *m = nullptr;
        check(gs_model_from_parts(dim, rank, mean, eigvals, eigvecs, residual_var, &m));
        return Model(m);
    }

    /// As above with the variances in double precision, kept exactly.
    static Model from_parts(std::size_t dim, std::size_t rank, const float *mean,
                            const double *eigvals, const float *eigvecs, double residual_var) {
        gs_model *m = nullptr;
        check(gs_model_from_parts_f64(dim, rank, mean, eigvals, eigvecs, residual_var, &m));
        return Model(m);
    }

    Model(const Model &) = delete;
    Model &operator=(const Model &) = delete;
    Model(Model &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Model &operator=(Model &&other) noexcept {
        if (this != &other) {
            gs_model_free(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    ~Model() { gs_model_free(handle_); }

    /// Writes the model file atomically. Throws Error.
    void save(const std::string &path) const { check(gs_model_save(handle_, path.c_str())); }

    /// Data dimension (0 for a moved-from model).
    std::size_t dim() const noexcept { return gs_model_dim(handle_); }
    /// Number of modes (0 for a moved-from model).
    std::size_t rank() const noexcept { return gs_model_rank(handle_); }

    /// The C handle, still owned by this object.
    const gs_model *get() const noexcept { return handle_; }
    /// Gives up ownership: the caller frees the handle with gs_model_free.
    gs_model *release() noexcept { return std::exchange(handle_, nullptr); }

private:
    gs_model *handle_;
};

/// A CPU context or one CUDA device's context (owns a gs_context*).
class Context {
public:
    /// Creates a context. Throws Error (GS_ERR_NO_CUDA when CUDA is asked for and absent).
    explicit Context(Device device = Device::Cpu, int ordinal = 0) : handle_(nullptr) {
        check(gs_context_create(static_cast<std::uint32_t>(device), ordinal, &handle_));
    }

    Context(const Context &) = delete;
    Context &operator=(const Context &) = delete;
    Context(Context &&other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
    Context &operator=(Context &&other) noexcept {
        if (this != &other) {
            gs_context_free(handle_);
            handle_ = std::exchange(other.handle_, nullptr);
        }
        return *this;
    }
    ~Context() { gs_context_free(handle_); }

    /// The device this context runs on (GS_DEVICE_CPU or GS_DEVICE_CUDA; 0 when moved from).
    std::uint32_t device() const noexcept { return gs_context_device(handle_); }

    /// The C handle, still owned by this object.
    gs_context *get() const noexcept { return handle_; }

    // Untyped buffers of any Dtype: host memory on a CPU context, device memory on a CUDA
    // context (then `stream` is the caller's CUstream). `out` is written only on success.

    /// Exact PF-ODE jump of `batch` rows from `from` to `to`.
    void skip(const Model &m, Dtype dtype, const void *x, void *out, std::size_t batch,
              Noise from, Noise to, void *stream = nullptr) const {
        check(gs_skip(handle_, m.get(), code(dtype), x, out, batch, from, to, stream));
    }
    /// As skip, with one source and one target level per row (from[batch], to[batch]).
    void skip_rows(const Model &m, Dtype dtype, const void *x, void *out, std::size_t batch,
                   const Noise *from, const Noise *to, void *stream = nullptr) const {
        check(gs_skip_rows(handle_, m.get(), code(dtype), x, out, batch, from, to, stream));
    }
    /// Posterior mean E[x0 | x_t] of `batch` rows at level `at`.
    void denoise(const Model &m, Dtype dtype, const void *x, void *out, std::size_t batch,
                 Noise at, void *stream = nullptr) const {
        check(gs_denoise(handle_, m.get(), code(dtype), x, out, batch, at, stream));
    }
    /// As denoise, with one level per row (at[batch]).
    void denoise_rows(const Model &m, Dtype dtype, const void *x, void *out, std::size_t batch,
                      const Noise *at, void *stream = nullptr) const {
        check(gs_denoise_rows(handle_, m.get(), code(dtype), x, out, batch, at, stream));
    }
    /// States along the exact path at each of levels[n_levels]; out is n_levels x batch x dim.
    void skip_trajectory(const Model &m, Dtype dtype, const void *x, void *out, std::size_t batch,
                         Noise from, const Noise *levels, std::size_t n_levels,
                         void *stream = nullptr) const {
        check(gs_skip_trajectory(handle_, m.get(), code(dtype), x, out, batch, from, levels,
                                 n_levels, stream));
    }
    /// x0-predictions along the exact path at each of levels[n_levels] (layout as above).
    void x0_trajectory(const Model &m, Dtype dtype, const void *x, void *out, std::size_t batch,
                       Noise from, const Noise *levels, std::size_t n_levels,
                       void *stream = nullptr) const {
        check(gs_x0_trajectory(handle_, m.get(), code(dtype), x, out, batch, from, levels,
                               n_levels, stream));
    }

    // float buffers: pointer + batch.

    void skip(const Model &m, const float *x, float *out, std::size_t batch, Noise from,
              Noise to) const {
        skip(m, Dtype::F32, x, out, batch, from, to);
    }
    void skip_rows(const Model &m, const float *x, float *out, std::size_t batch,
                   const Noise *from, const Noise *to) const {
        skip_rows(m, Dtype::F32, x, out, batch, from, to);
    }
    void denoise(const Model &m, const float *x, float *out, std::size_t batch, Noise at) const {
        denoise(m, Dtype::F32, x, out, batch, at);
    }
    void denoise_rows(const Model &m, const float *x, float *out, std::size_t batch,
                      const Noise *at) const {
        denoise_rows(m, Dtype::F32, x, out, batch, at);
    }
    void skip_trajectory(const Model &m, const float *x, float *out, std::size_t batch,
                         Noise from, const Noise *levels, std::size_t n_levels) const {
        skip_trajectory(m, Dtype::F32, x, out, batch, from, levels, n_levels);
    }
    void x0_trajectory(const Model &m, const float *x, float *out, std::size_t batch, Noise from,
                       const Noise *levels, std::size_t n_levels) const {
        x0_trajectory(m, Dtype::F32, x, out, batch, from, levels, n_levels);
    }

#if __cplusplus >= 202002L
    // float spans: the batch is x.size() / dim; sizes are checked here (GS_ERR_SHAPE_MISMATCH)
    // so that a short span can never be read or written past its end.

    void skip(const Model &m, std::span<const float> x, std::span<float> out, Noise from,
              Noise to) const {
        skip(m, x.data(), out.data(), rows(m, x, out, 1), from, to);
    }
    void skip_rows(const Model &m, std::span<const float> x, std::span<float> out,
                   std::span<const Noise> from, std::span<const Noise> to) const {
        const std::size_t batch = rows(m, x, out, 1);
        levels_per_row(from, batch, "from");
        levels_per_row(to, batch, "to");
        skip_rows(m, x.data(), out.data(), batch, from.data(), to.data());
    }
    void denoise(const Model &m, std::span<const float> x, std::span<float> out, Noise at) const {
        denoise(m, x.data(), out.data(), rows(m, x, out, 1), at);
    }
    void denoise_rows(const Model &m, std::span<const float> x, std::span<float> out,
                      std::span<const Noise> at) const {
        const std::size_t batch = rows(m, x, out, 1);
        levels_per_row(at, batch, "at");
        denoise_rows(m, x.data(), out.data(), batch, at.data());
    }
    void skip_trajectory(const Model &m, std::span<const float> x, std::span<float> out,
                         Noise from, std::span<const Noise> levels) const {
        skip_trajectory(m, x.data(), out.data(), rows(m, x, out, levels.size()), from,
                        levels.data(), levels.size());
    }
    void x0_trajectory(const Model &m, std::span<const float> x, std::span<float> out,
                       Noise from, std::span<const Noise> levels) const {
        x0_trajectory(m, x.data(), out.data(), rows(m, x, out, levels.size()), from,
                      levels.data(), levels.size());
    }
#endif

private:
    static std::uint32_t code(Dtype d) noexcept { return static_cast<std::uint32_t>(d); }

#if __cplusplus >= 202002L
    // Rows in x, after checking x is whole rows and out holds `slabs` times as many values.
    static std::size_t rows(const Model &m, std::span<const float> x, std::span<float> out,
                            std::size_t slabs) {
        const std::size_t d = m.dim();
        if (d == 0) {
            throw Error(GS_ERR_NULL_POINTER, "argument `model` is NULL");
        }
        if (x.empty() || x.size() % d != 0) {
            throw Error(GS_ERR_SHAPE_MISMATCH, "x has " + std::to_string(x.size()) +
                                                   " values, not a positive multiple of dim = " +
                                                   std::to_string(d));
        }
        if (out.size() != slabs * x.size()) {
            throw Error(GS_ERR_SHAPE_MISMATCH, "out has " + std::to_string(out.size()) +
                                                   " values, expected " +
                                                   std::to_string(slabs * x.size()));
        }
        return x.size() / d;
    }

    static void levels_per_row(std::span<const Noise> levels, std::size_t batch,
                               const char *arg) {
        if (levels.size() != batch) {
            throw Error(GS_ERR_SHAPE_MISMATCH, std::string(arg) + " has " +
                                                   std::to_string(levels.size()) +
                                                   " levels, expected one per row (" +
                                                   std::to_string(batch) + ")");
        }
    }
#endif

    gs_context *handle_;
};

}  // namespace gaussskip

#endif  // GAUSSSKIP_HPP
