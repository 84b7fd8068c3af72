//! Loops compiled twice: for the baseline target and with AVX2 enabled, the second chosen at
//! run time where the CPU has it. Plain loops the compiler vectorises then run four f64 or
//! eight f32 lanes per instruction instead of two and four, with the same arithmetic element
//! by element (neither compilation contracts a multiply and an add into one rounding), so
//! the same bits.

/// Whether this CPU runs the AVX2 compilation.
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// `body` compiled with AVX2 enabled.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}

/// Runs `body` in its AVX2 compilation where the CPU has AVX2.
#[inline(always)]
pub(crate) fn dispatch<R>(body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { with_avx2(body) };
    }
    body()
}
