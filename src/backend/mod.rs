//! Backends: given rows x and a [`Plan`](crate::noise::Plan), compute for every output slab
//! `out = a mean + b y + U (w .* U^T y)` with `y = x - c mean`.
//!
//! The CPU backend is always present; the CUDA backend is compiled with the `cuda` feature and
//! found at run time.

pub mod cpu;
mod cpu_small;
#[cfg(feature = "cuda")]
pub mod cuda;

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
