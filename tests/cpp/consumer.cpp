// A C++ consumer of gaussskip through the RAII header bindings/cpp/gaussskip.hpp, run by
// tests/c_consumers.rs (compiled as C++17, and as C++20 for the std::span overloads).
//
// usage: consumer_cpp DIR VERSION absent|present   (the fixture of tests/c/consumer.c)
//
// Checks: results against the f64 reference with NaN-poisoned outputs; each bad call throws
// gaussskip::Error with its own status and the library's message and leaves the output as it
// was; handles are move-only and a moved-from handle fails cleanly; errors are per thread.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "gaussskip.hpp"

namespace gs = gaussskip;

namespace {

int failures = 0;
int checks = 0;

void check(bool cond, const std::string &what) {
    ++checks;
    if (!cond) {
        ++failures;
        std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    }
}

std::string dir;

std::vector<char> read_bytes(const std::string &name) {
    std::ifstream f(dir + "/" + name, std::ios::binary);
    if (!f) {
        std::fprintf(stderr, "cannot open %s/%s\n", dir.c_str(), name.c_str());
        std::exit(2);
    }
    return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

template <class T>
std::vector<T> read_values(const std::string &name, std::size_t count) {
    std::vector<char> bytes = read_bytes(name);
    if (bytes.size() != count * sizeof(T)) {
        std::fprintf(stderr, "%s has %zu bytes, expected %zu\n", name.c_str(), bytes.size(),
                     count * sizeof(T));
        std::exit(2);
    }
    std::vector<T> v(count);
    std::memcpy(v.data(), bytes.data(), bytes.size());
    return v;
}

struct Fixture {
    std::size_t dim = 0, rank = 0, batch = 0, n_levels = 0;
    gs::Noise from{}, to{}, at{};
    std::vector<gs::Noise> from_rows, to_rows, at_rows, levels;
    std::vector<float> x;
};

Fixture load_fixture() {
    Fixture fx;
    std::vector<char> meta = read_bytes("meta.txt");
    std::istringstream in(std::string(meta.begin(), meta.end()));
    if (!(in >> fx.dim >> fx.rank >> fx.batch >> fx.n_levels)) {
        std::fprintf(stderr, "meta.txt: expected \"dim rank batch n_levels\"\n");
        std::exit(2);
    }
    auto l = read_values<gs::Noise>("levels.f64", 3 + 3 * fx.batch + fx.n_levels);
    fx.from = l[0];
    fx.to = l[1];
    fx.at = l[2];
    auto slice = [&](std::size_t start, std::size_t n) {
        return std::vector<gs::Noise>(l.begin() + static_cast<std::ptrdiff_t>(start),
                                      l.begin() + static_cast<std::ptrdiff_t>(start + n));
    };
    fx.from_rows = slice(3, fx.batch);
    fx.to_rows = slice(3 + fx.batch, fx.batch);
    fx.at_rows = slice(3 + 2 * fx.batch, fx.batch);
    fx.levels = slice(3 + 3 * fx.batch, fx.n_levels);
    fx.x = read_values<float>("x.f32", fx.batch * fx.dim);
    return fx;
}

double rel_error(const std::vector<float> &out, const std::vector<double> &ref) {
    double num = 0.0, den = 0.0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        if (!std::isfinite(out[i])) {
            return std::numeric_limits<double>::infinity();
        }
        num += (out[i] - ref[i]) * (out[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return std::sqrt(num / den);
}

std::vector<float> poisoned(std::size_t n) {
    return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN());
}

void check_close(const std::string &what, const std::vector<float> &out, const std::string &ref) {
    auto want = read_values<double>(ref, out.size());
    double err = rel_error(out, want);
    std::printf("c++ %-28s rel_err = %.3e (tol 1e-05)\n", what.c_str(), err);
    check(err <= 1e-5, what + ": relative error " + std::to_string(err) + " > 1e-5");
}

// Where a failure is detected: in the library (its message is in the exception) or in the
// wrapper's own size checks (the library is never called).
enum class From { Library, Wrapper };

// Runs `call`, which must throw gs::Error with `want`; `out` must keep its bytes.
void expect_throw(const std::string &what, gs_status want, const std::function<void()> &call,
                  const std::vector<float> *out = nullptr, From from = From::Library) {
    std::vector<unsigned char> before;
    if (out) {
        before.resize(out->size() * sizeof(float));
        std::memcpy(before.data(), out->data(), before.size());
    }
    try {
        call();
        check(false, what + ": no exception");
    } catch (const gs::Error &e) {
        check(e.status() == want, what + ": status " + std::to_string(e.status()) + " (" +
                                      e.what() + "), want " + std::to_string(want));
        if (from == From::Library) {
            std::string detail = gs_last_error_message();
            check(!detail.empty() && std::string(e.what()).find(detail) != std::string::npos,
                  what + ": exception text \"" + e.what() + "\" lacks the library's message");
        }
        check(std::string(e.what()).find(gs_status_message(want)) != std::string::npos,
              what + ": exception text lacks the status message");
    } catch (const std::exception &e) {
        check(false, what + ": threw something else: " + e.what());
    }
    if (out) {
        check(std::memcmp(before.data(), out->data(), before.size()) == 0,
              what + ": output written by a failing call");
    }
}

void check_results(const Fixture &fx, const gs::Context &ctx, const gs::Model &model) {
    const std::size_t n = fx.batch * fx.dim, nt = fx.n_levels * n, b = fx.batch;
    auto out = poisoned(n);
    ctx.skip(model, fx.x.data(), out.data(), b, fx.from, fx.to);
    check_close("skip (pointer)", out, "ref_skip.f64");
    out = poisoned(n);
    ctx.denoise(model, fx.x.data(), out.data(), b, fx.at);
    check_close("denoise (pointer)", out, "ref_denoise.f64");
    out = poisoned(n);
    ctx.skip_rows(model, fx.x.data(), out.data(), b, fx.from_rows.data(), fx.to_rows.data());
    check_close("skip_rows (pointer)", out, "ref_skip_rows.f64");
    out = poisoned(n);
    ctx.denoise_rows(model, fx.x.data(), out.data(), b, fx.at_rows.data());
    check_close("denoise_rows (pointer)", out, "ref_denoise_rows.f64");
    auto traj = poisoned(nt);
    ctx.skip_trajectory(model, fx.x.data(), traj.data(), b, fx.from, fx.levels.data(),
                        fx.n_levels);
    check_close("skip_trajectory (pointer)", traj, "ref_skip_trajectory.f64");
    traj = poisoned(nt);
    ctx.x0_trajectory(model, fx.x.data(), traj.data(), b, fx.from, fx.levels.data(), fx.n_levels);
    check_close("x0_trajectory (pointer)", traj, "ref_x0_trajectory.f64");
    // The untyped overload with an explicit element type.
    out = poisoned(n);
    ctx.skip(model, gs::Dtype::F32, fx.x.data(), out.data(), b, fx.from, fx.to);
    check_close("skip (Dtype::F32, void*)", out, "ref_skip.f64");

#if __cplusplus >= 202002L
    std::span<const float> x(fx.x);
    out = poisoned(n);
    ctx.skip(model, x, out, fx.from, fx.to);
    check_close("skip (span)", out, "ref_skip.f64");
    out = poisoned(n);
    ctx.denoise(model, x, out, fx.at);
    check_close("denoise (span)", out, "ref_denoise.f64");
    out = poisoned(n);
    ctx.skip_rows(model, x, out, fx.from_rows, fx.to_rows);
    check_close("skip_rows (span)", out, "ref_skip_rows.f64");
    out = poisoned(n);
    ctx.denoise_rows(model, x, out, fx.at_rows);
    check_close("denoise_rows (span)", out, "ref_denoise_rows.f64");
    traj = poisoned(nt);
    ctx.skip_trajectory(model, x, traj, fx.from, fx.levels);
    check_close("skip_trajectory (span)", traj, "ref_skip_trajectory.f64");
    traj = poisoned(nt);
    ctx.x0_trajectory(model, x, traj, fx.from, fx.levels);
    check_close("x0_trajectory (span)", traj, "ref_x0_trajectory.f64");
#endif
}

void check_errors(const Fixture &fx, const gs::Context &ctx, const gs::Model &model,
                  const std::string &cuda) {
    const std::size_t n = fx.batch * fx.dim, b = fx.batch;
    std::vector<float> out(fx.n_levels * n);
    std::memset(out.data(), 0xA5, out.size() * sizeof(float));

    auto bad_x = fx.x;
    bad_x[n - 1] = std::numeric_limits<float>::quiet_NaN();
    expect_throw("NaN in x", GS_ERR_NON_FINITE,
                 [&] { ctx.skip(model, bad_x.data(), out.data(), b, fx.from, fx.to); }, &out);
    expect_throw("from sigma 0", GS_ERR_INVALID_NOISE,
                 [&] { ctx.skip(model, fx.x.data(), out.data(), b, gs::edm(0.0), fx.to); }, &out);
    expect_throw("negative sigma", GS_ERR_INVALID_NOISE,
                 [&] { ctx.denoise(model, fx.x.data(), out.data(), b, gs::edm(-1.0)); }, &out);
    expect_throw("alpha NaN", GS_ERR_INVALID_NOISE,
                 [&] {
                     ctx.skip(model, fx.x.data(), out.data(), b, fx.from,
                              gs::Noise{std::nan(""), 1.0});
                 },
                 &out);
    expect_throw("batch 0", GS_ERR_INVALID_ARGUMENT,
                 [&] { ctx.skip(model, fx.x.data(), out.data(), 0, fx.from, fx.to); }, &out);
    expect_throw("x NULL", GS_ERR_NULL_POINTER,
                 [&] { ctx.denoise(model, nullptr, out.data(), b, fx.at); }, &out);
    expect_throw("unknown dtype", GS_ERR_UNSUPPORTED_DTYPE,
                 [&] {
                     ctx.skip(model, static_cast<gs::Dtype>(5), fx.x.data(), out.data(), b,
                              fx.from, fx.to);
                 },
                 &out);
    expect_throw("x overlapping out", GS_ERR_INVALID_ARGUMENT, [&] {
        ctx.skip(model, out.data(), out.data() + 1, b, fx.from, fx.to);
    });
    expect_throw("trajectory without levels", GS_ERR_INVALID_ARGUMENT,
                 [&] {
                     ctx.x0_trajectory(model, fx.x.data(), out.data(), b, fx.from,
                                       fx.levels.data(), 0);
                 },
                 &out);
#if __cplusplus >= 202002L
    // Sizes are checked in the wrapper before any pointer reaches the library.
    std::span<const float> x(fx.x);
    std::span<float> out_span(out.data(), n);
    expect_throw("span: x not whole rows", GS_ERR_SHAPE_MISMATCH,
                 [&] { ctx.skip(model, x.first(n - 1), out_span, fx.from, fx.to); }, &out,
                 From::Wrapper);
    expect_throw("span: out too short", GS_ERR_SHAPE_MISMATCH,
                 [&] { ctx.denoise(model, x, out_span.first(n - 1), fx.at); }, &out,
                 From::Wrapper);
    expect_throw("span: trajectory out one level short", GS_ERR_SHAPE_MISMATCH,
                 [&] { ctx.skip_trajectory(model, x, out_span, fx.from, fx.levels); }, &out,
                 From::Wrapper);
    expect_throw("span: per-row levels short", GS_ERR_SHAPE_MISMATCH,
                 [&] {
                     ctx.skip_rows(model, x, out_span,
                                   std::span<const gs::Noise>(fx.from_rows).first(b - 1),
                                   fx.to_rows);
                 },
                 &out, From::Wrapper);
    expect_throw("span: empty x", GS_ERR_SHAPE_MISMATCH,
                 [&] { ctx.denoise(model, x.first(0), out_span.first(0), fx.at); }, &out,
                 From::Wrapper);
#endif

    expect_throw("load missing file", GS_ERR_IO,
                 [&] { gs::Model::load(dir + "/does-not-exist.safetensors"); });
    {
        std::ofstream(dir + "/garbage-cpp.safetensors") << "not a model at all";
    }
    expect_throw("load garbage", GS_ERR_FILE_FORMAT,
                 [&] { gs::Model::load(dir + "/garbage-cpp.safetensors"); });
    const float mean[2] = {0.0f, 1.0f}, vals[2] = {2.0f, 1.0f};
    const float skewed[4] = {1.0f, 0.0f, 0.8f, 0.6f};
    expect_throw("from_parts non-orthonormal", GS_ERR_INVALID_MODEL,
                 [&] { gs::Model::from_parts(2, 2, mean, vals, skewed, 0.0f); });
    expect_throw("from_parts rank > dim", GS_ERR_INVALID_ARGUMENT,
                 [&] { gs::Model::from_parts(1, 2, mean, vals, skewed, 0.0f); });
    {
        // Double-precision variances: kept exactly, even where float would round or overflow.
        const double vals64[2] = {0.1, 1e-50};
        const float eye[4] = {1.0f, 0.0f, 0.0f, 1.0f};
        gs::Model m64 = gs::Model::from_parts(2, 2, mean, vals64, eye, 1e39);
        double got[2] = {0.0, 0.0}, resid = 0.0;
        check(gs_model_get_parts(m64.get(), nullptr, got, nullptr, &resid) == GS_OK,
              "get_parts of the double-precision model");
        check(got[0] == 0.1 && got[1] == 1e-50 && resid == 1e39,
              "from_parts with double variances did not keep them exactly");
        const double rising[2] = {1e-50, 0.1};
        expect_throw("from_parts f64 increasing eigvals", GS_ERR_INVALID_MODEL,
                     [&] { gs::Model::from_parts(2, 2, mean, rising, eye, 0.0); });
    }
    expect_throw("CPU ordinal 3", GS_ERR_INVALID_ARGUMENT,
                 [&] { gs::Context c(gs::Device::Cpu, 3); });
    expect_throw("unknown device", GS_ERR_INVALID_ARGUMENT,
                 [&] { gs::Context c(static_cast<gs::Device>(9)); });
    if (cuda == "absent") {
        expect_throw("CUDA context without a device", GS_ERR_NO_CUDA,
                     [&] { gs::Context c(gs::Device::Cuda); });
    } else {
        try {
            gs::Context c(gs::Device::Cuda);
            check(c.device() == GS_DEVICE_CUDA, "CUDA context reports another device");
        } catch (const gs::Error &e) {
            check(e.status() == GS_ERR_NO_CUDA, std::string("CUDA context: ") + e.what());
        }
    }
}

void check_ownership(const Fixture &fx) {
    static_assert(!std::is_copy_constructible_v<gs::Model>, "Model must not be copyable");
    static_assert(!std::is_copy_assignable_v<gs::Model>, "Model must not be copy-assignable");
    static_assert(std::is_nothrow_move_constructible_v<gs::Model>, "Model moves cannot throw");
    static_assert(std::is_nothrow_move_assignable_v<gs::Model>, "Model moves cannot throw");
    static_assert(!std::is_copy_constructible_v<gs::Context>, "Context must not be copyable");
    static_assert(std::is_nothrow_move_constructible_v<gs::Context>, "Context moves cannot throw");
    static_assert(std::is_nothrow_move_assignable_v<gs::Context>, "Context moves cannot throw");

    gs::Model a = gs::Model::load(dir + "/model.safetensors");
    const gs_model *handle = a.get();
    gs::Model b = std::move(a);
    check(a.get() == nullptr && a.dim() == 0, "moved-from Model still holds a handle");
    check(b.get() == handle && b.dim() == fx.dim && b.rank() == fx.rank,
          "moved-to Model lost the handle");

    gs::Context c1(gs::Device::Cpu);
    gs::Context c2 = std::move(c1);
    check(c1.get() == nullptr && c1.device() == 0, "moved-from Context still holds a handle");
    check(c2.device() == GS_DEVICE_CPU, "moved-to Context lost its device");

    // A moved-from handle reaches the library as NULL and fails with that status.
    std::vector<float> out(fx.batch * fx.dim);
    std::memset(out.data(), 0x5A, out.size() * sizeof(float));
    expect_throw("call with a moved-from Model", GS_ERR_NULL_POINTER,
                 [&] { c2.skip(a, fx.x.data(), out.data(), fx.batch, fx.from, fx.to); }, &out);
    expect_throw("call on a moved-from Context", GS_ERR_NULL_POINTER,
                 [&] { c1.skip(b, fx.x.data(), out.data(), fx.batch, fx.from, fx.to); }, &out);
#if __cplusplus >= 202002L
    expect_throw("span call with a moved-from Model", GS_ERR_NULL_POINTER, [&] {
        c2.skip(a, std::span<const float>(fx.x), std::span<float>(out), fx.from, fx.to);
    }, &out, From::Wrapper);
#endif

    // Move-assignment frees the old handle and takes the new one; self-move keeps it.
    gs::Model other = gs::Model::load(dir + "/model.safetensors");
    other = std::move(b);
    check(other.get() == handle && b.get() == nullptr, "move-assignment did not transfer");
    gs::Model &alias = other;
    other = std::move(alias);
    check(other.get() == handle, "self-move-assignment lost the handle");

    // release() hands the handle to C code, which frees it; the wrapper no longer owns it.
    gs_model *raw = other.release();
    check(raw == handle && other.get() == nullptr, "release() did not give up ownership");
    gs::Model readopted(raw);
    auto res = poisoned(fx.batch * fx.dim);
    c2.skip(readopted, fx.x.data(), res.data(), fx.batch, fx.from, fx.to);
    check_close("skip after release/adopt", res, "ref_skip.f64");
}

void check_thread_errors(const gs::Context &ctx, const gs::Model &model, const Fixture &fx) {
    // A thread's failure does not show in another thread's message.
    std::string seen;
    std::vector<float> out(fx.batch * fx.dim);
    try {
        ctx.skip(model, fx.x.data(), out.data(), fx.batch, gs::edm(0.0), fx.to);
    } catch (const gs::Error &) {
    }
    std::string mine = gs_last_error_message();
    std::thread t([&] { seen = gs_last_error_message(); });
    t.join();
    check(!mine.empty() && seen.empty(),
          "error message leaked to another thread: \"" + seen + "\"");
}

}  // namespace

int main(int argc, char **argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s DIR VERSION absent|present\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    const std::string cuda = argv[3];
    check(gs::abi_compatible(), "library ABI differs from the header's");
    check(gs::version() == argv[2], "version " + gs::version() + " != " + argv[2]);
    Fixture fx = load_fixture();
    try {
        gs::Model model = gs::Model::load(dir + "/model.safetensors");
        gs::Context ctx(gs::Device::Cpu);
        check(model.dim() == fx.dim && model.rank() == fx.rank, "model size differs");
        check_results(fx, ctx, model);
        check_errors(fx, ctx, model, cuda);
        check_ownership(fx);
        check_thread_errors(ctx, model, fx);
    } catch (const gs::Error &e) {
        check(false, std::string("unexpected gaussskip::Error: ") + e.what());
    }
    std::printf("%d checks, %d failed (C++%ld)\n", checks, failures, __cplusplus / 100 % 100);
    return failures == 0 ? 0 : 1;
}
