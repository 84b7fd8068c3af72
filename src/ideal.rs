//! The exact optimal denoiser of a finite dataset (the "ideal model").
