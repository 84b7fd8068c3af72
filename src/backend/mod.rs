//! Backends: given rows x and a [`Plan`](crate::noise::Plan), compute for every output slab
//! `out = a mean + b y + U (w .* U^T y)` with `y = x - c mean`.
//!
//! The CPU backend is always present; the CUDA backend is compiled with the `cuda` feature and
//! found at run time.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
