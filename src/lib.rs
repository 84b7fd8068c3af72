//! # gaussskip
//!
//! Skip the first steps of a diffusion sampler with the exact solution of the
//! probability-flow ODE for a Gaussian fitted to the training data.
//!
//! Early in reverse diffusion a trained denoiser acts almost exactly like the optimal denoiser
//! of the data's Gaussian (mean and covariance). For a Gaussian the PF-ODE has a closed form,
//! so a sampler can jump from pure noise to a mid noise level in one linear map and spend its
//! network evaluations only on the rest.
//!
//! ```
//! use gaussskip::{Context, Model, ModelMeta, Noise};
//! // A 2-dim model with one mode of variance 4 and residual variance 1.
//! let model = Model::from_parts(vec![0.0, 0.0], vec![4.0], vec![1.0, 0.0], 1.0, ModelMeta::default())?;
//! let x = vec![80.0f32, -40.0];
//! let mut out = vec![0f32; 2];
//! Context::cpu().skip(&model, &x, &mut out, Noise::edm(80.0), Noise::edm(10.0))?;
//! # Ok::<(), gaussskip::Error>(())
//! ```
//!
//! ## Layout
//! model file → [`Model`] → [`Context`] → operation ([`noise::Op`], coefficients per row) →
//! backend (projection, weighted back-projection) → caller's buffer.
//!
//! ## Numerics
//! [`reference`] is the f64 oracle. The CPU path computes in f32 and stays within a relative
//! error ‖out − ref‖/‖ref‖ ≤ 1e-5 of it.

mod aligned;
pub mod backend;
pub mod calibrate;
pub mod context;
pub mod demo;
pub mod dtype;
pub mod error;
pub mod ffi;
pub mod ffi_calibrate;
pub mod ffi_components;
pub mod ffi_fit;
pub mod fit;
pub mod ideal;
pub mod model;
pub mod noise;
pub mod npy;
mod pool;
pub mod reference;
pub mod rng;
mod rows;
mod safetensors_header;
pub mod sampler;
mod simd;

pub use backend::{KernelVersion, LaunchTimes, Splits};
pub use context::{Context, Device, EigvecStorage};
pub use dtype::{Dtype, Element};
pub use error::{Error, Result};
pub use model::{FitInfo, FitMethod, Model, ModelMeta};
pub use noise::{Levels, Noise, Op};
