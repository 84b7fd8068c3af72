//! Fitting a Gaussian model from data: streaming mergeable moments and eigendecomposition.
