//! Backends: given rows x and a [`Plan`](crate::noise::Plan), compute for every output slab
//! `out = a mean + b y + U (w .* U^T y)` with `y = x - c mean`.
//!
//! The CPU backend is always present; the CUDA backend is compiled with the `cuda` feature and
//! found at run time.

pub mod cpu;
#[cfg(target_arch = "x86_64")]
mod cpu_gemm;
mod cpu_rows;
mod cpu_small;
mod cpu_small_wide;
#[cfg(feature = "cuda")]
pub mod cuda;

/// Which generation of the CUDA kernels a context runs (kernels/NOTES.md). Both are in the
/// fatbin and loaded with the context; the choice only picks the entry points of later calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KernelVersion {
    /// The first generation: register-staged double buffering, split counts for about four
    /// blocks per multiprocessor.
    V1,
    /// The second generation (the default): a multi-stage cp.async pipeline, vector loads,
    /// split counts for whole waves of the resident blocks.
    #[default]
    V2,
}

impl KernelVersion {
    /// "v1" or "v2" (the values of `GAUSSSKIP_KERNELS`).
    pub fn parse(text: &str) -> Option<KernelVersion> {
        match text.trim() {
            "v1" | "1" => Some(KernelVersion::V1),
            "v2" | "2" => Some(KernelVersion::V2),
            _ => None,
        }
    }
}

/// Split counts chosen by the caller instead of the CUDA launcher's rule (for measurements).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Splits {
    /// Split-K count of launch 1 (the projection, along dim); `None` = the rule.
    pub project: Option<usize>,
    /// Split-K count of launch 2 (the back-projection, along the modes); `None` = the rule.
    pub backproject: Option<usize>,
}

/// Per-launch timings of a CUDA skip ([`crate::Context::time_skip_launches`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LaunchTimes {
    /// Median milliseconds of launch 1 (projection) and launch 2 (back-projection).
    pub ms: [f64; 2],
    /// Blocks per split (grid x) of each launch.
    pub blocks: [u32; 2],
    /// Split-K count (grid z) of each launch.
    pub splits: [u32; 2],
    /// Rows per block of each launch.
    pub block_rows: [u32; 2],
    /// Resident blocks per multiprocessor of each kernel (occupancy API).
    pub blocks_per_sm: [u32; 2],
    /// Blocks / (multiprocessors x resident blocks): waves of each launch.
    pub waves: [f64; 2],
}

#[cfg(test)]
mod tests {
    use super::KernelVersion;

    #[test]
    fn kernel_versions_parse_from_their_names_and_default_to_v2() {
        assert_eq!(KernelVersion::parse("v1"), Some(KernelVersion::V1));
        assert_eq!(KernelVersion::parse(" v2\n"), Some(KernelVersion::V2));
        assert_eq!(KernelVersion::parse("2"), Some(KernelVersion::V2));
        assert_eq!(KernelVersion::parse("v3"), None);
        assert_eq!(KernelVersion::parse(""), None);
        assert_eq!(KernelVersion::default(), KernelVersion::V2);
    }
}
