//! The f64 oracle (`gaussskip::reference::Gaussian`) against mathematics computed here,
//! independently of it: dense covariance matrices, LU solves, a Denman–Beavers matrix square
//! root and a fine RK4 integration of the EDM probability-flow ODE
//! dx/dσ = (x − D(x, σ)) / σ with D from dense linear algebra.
//!
//! Small dimensions (7–12) with random orthonormal eigenvectors (Gram–Schmidt on normals from
//! `gaussskip::rng::Rng`, fixed seeds), so every dense computation is cheap and exact to f64.

use gaussskip::reference::{rel_error, Gaussian};
use gaussskip::rng::Rng;
use gaussskip::Noise;

// ---------------------------------------------------------------------------------------------
// Dense linear algebra, written out so that nothing here reuses the oracle's code paths.

/// Row-major square matrix.
#[derive(Clone, Debug)]
struct Mat {
    n: usize,
    a: Vec<f64>,
}

impl Mat {
    fn zeros(n: usize) -> Mat {
        Mat {
            n,
            a: vec![0.0; n * n],
        }
    }
    fn identity(n: usize) -> Mat {
        let mut m = Mat::zeros(n);
        (0..n).for_each(|i| m.a[i * n + i] = 1.0);
        m
    }
    fn at(&self, i: usize, j: usize) -> f64 {
        self.a[i * self.n + j]
    }
    /// self * s + other * t
    fn lin(&self, s: f64, other: &Mat, t: f64) -> Mat {
        Mat {
            n: self.n,
            a: self
                .a
                .iter()
                .zip(&other.a)
                .map(|(x, y)| s * x + t * y)
                .collect(),
        }
    }
    fn mul(&self, other: &Mat) -> Mat {
        let n = self.n;
        let mut out = Mat::zeros(n);
        for i in 0..n {
            for k in 0..n {
                let v = self.at(i, k);
                for j in 0..n {
                    out.a[i * n + j] += v * other.at(k, j);
                }
            }
        }
        out
    }
    fn mul_vec(&self, x: &[f64]) -> Vec<f64> {
        (0..self.n)
            .map(|i| (0..self.n).map(|j| self.at(i, j) * x[j]).sum())
            .collect()
    }
    /// Solves self * X = B for every column of B (LU with partial pivoting).
    fn solve_mat(&self, b: &Mat) -> Mat {
        let n = self.n;
        let mut a = self.a.clone();
        let mut x = b.a.clone();
        for col in 0..n {
            let piv = (col..n)
                .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
                .unwrap();
            assert!(a[piv * n + col].abs() > 1e-300, "singular matrix");
            if piv != col {
                for j in 0..n {
                    a.swap(piv * n + j, col * n + j);
                    x.swap(piv * n + j, col * n + j);
                }
            }
            for i in col + 1..n {
                let f = a[i * n + col] / a[col * n + col];
                if f != 0.0 {
                    for j in col..n {
                        a[i * n + j] -= f * a[col * n + j];
                    }
                    for j in 0..n {
                        x[i * n + j] -= f * x[col * n + j];
                    }
                }
            }
        }
        for col in (0..n).rev() {
            for j in 0..n {
                let mut v = x[col * n + j];
                for k in col + 1..n {
                    v -= a[col * n + k] * x[k * n + j];
                }
                x[col * n + j] = v / a[col * n + col];
            }
        }
        Mat { n, a: x }
    }
    fn solve(&self, b: &[f64]) -> Vec<f64> {
        let n = self.n;
        let mut bm = Mat::zeros(n);
        (0..n).for_each(|i| bm.a[i * n] = b[i]);
        let x = self.solve_mat(&bm);
        (0..n).map(|i| x.at(i, 0)).collect()
    }
    fn inverse(&self) -> Mat {
        self.solve_mat(&Mat::identity(self.n))
    }
    /// Principal square root of a symmetric positive-definite matrix (Denman–Beavers).
    fn sqrt_spd(&self) -> Mat {
        let (mut y, mut z) = (self.clone(), Mat::identity(self.n));
        for _ in 0..100 {
            let y_next = y.lin(0.5, &z.inverse(), 0.5);
            let z_next = z.lin(0.5, &y.inverse(), 0.5);
            let step = rel_error(&y_next.a, &y.a);
            y = y_next;
            z = z_next;
            if step < 1e-15 {
                break;
            }
        }
        y
    }
}

/// Orthogonal projector onto the column space of a symmetric matrix: Gram–Schmidt over its
/// columns, dropping those that are (to rounding) in the span of the previous ones.
fn range_projector(m: &Mat) -> Mat {
    let n = m.n;
    let scale = m.a.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for j in 0..n {
        let mut v: Vec<f64> = (0..n).map(|i| m.at(i, j)).collect();
        for _ in 0..2 {
            for q in &basis {
                let p = dot(q, &v);
                v.iter_mut().zip(q).for_each(|(vi, qi)| *vi -= p * qi);
            }
        }
        let nv = norm(&v);
        if nv > 1e-9 * scale {
            basis.push(v.iter().map(|x| x / nv).collect());
        }
    }
    let mut p = Mat::zeros(n);
    for q in &basis {
        for i in 0..n {
            for j in 0..n {
                p.a[i * n + j] += q[i] * q[j];
            }
        }
    }
    p
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

// ---------------------------------------------------------------------------------------------
// Models.

/// `r` orthonormal vectors of length `d` by (twice-applied) Gram–Schmidt on random normals.
fn orthonormal(rng: &mut Rng, r: usize, d: usize) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = Vec::with_capacity(r);
    while out.len() < r {
        let mut v = rng.normals(d);
        for _ in 0..2 {
            for u in &out {
                let p = dot(u, &v);
                v.iter_mut().zip(u).for_each(|(vi, ui)| *vi -= p * ui);
            }
        }
        let n = norm(&v);
        v.iter_mut().for_each(|vi| *vi /= n);
        out.push(v);
    }
    out
}

fn gaussian(seed: u64, d: usize, eigvals: &[f64], residual_var: f64) -> Gaussian {
    let mut rng = Rng::new(seed);
    let eigvecs = orthonormal(&mut rng, eigvals.len(), d);
    let mean = rng.normals(d).iter().map(|v| 0.7 * v).collect();
    Gaussian {
        mean,
        eigvals: eigvals.to_vec(),
        eigvecs,
        residual_var,
    }
}

/// The four model kinds the exactness claims of SPEC §4 are made for.
fn models() -> Vec<(&'static str, Gaussian)> {
    vec![
        (
            "full rank",
            gaussian(1, 7, &[6.0, 3.1, 1.7, 0.9, 0.33, 0.05, 0.004], 0.0),
        ),
        (
            "low rank, residual 0",
            gaussian(2, 10, &[4.0, 1.5, 0.6, 0.1], 0.0),
        ),
        (
            "low rank, residual 0.25",
            gaussian(3, 12, &[5.0, 2.0, 0.8, 0.3, 0.2], 0.25),
        ),
        (
            "zero eigenvalues",
            gaussian(4, 9, &[3.0, 1.2, 0.4, 0.0, 0.0, 0.0], 0.4),
        ),
        (
            "full rank with zeros",
            gaussian(5, 8, &[2.5, 1.0, 0.5, 0.2, 0.0, 0.0, 0.0, 0.0], 0.0),
        ),
    ]
}

/// Dense covariance U diag(λ) Uᵀ + λ⊥ (I − U Uᵀ).
fn covariance(g: &Gaussian) -> Mat {
    let d = g.dim();
    let mut c = Mat::identity(d).lin(g.residual_var, &Mat::zeros(d), 0.0);
    for (u, &l) in g.eigvecs.iter().zip(&g.eigvals) {
        for i in 0..d {
            for j in 0..d {
                c.a[i * d + j] += (l - g.residual_var) * u[i] * u[j];
            }
        }
    }
    c
}

/// Marginal covariance at a level: α² Σ + σ² I.
fn marginal_cov(sigma_mat: &Mat, at: Noise) -> Mat {
    sigma_mat.lin(
        at.alpha * at.alpha,
        &Mat::identity(sigma_mat.n),
        at.sigma * at.sigma,
    )
}

/// Posterior mean μ + α Σ (α² Σ + σ² I)⁻¹ (x − α μ) by dense solve.
fn dense_denoise(g: &Gaussian, cov: &Mat, x: &[f64], at: Noise) -> Vec<f64> {
    let y: Vec<f64> = x
        .iter()
        .zip(&g.mean)
        .map(|(xi, m)| xi - at.alpha * m)
        .collect();
    let z = marginal_cov(cov, at).solve(&y);
    let sz = cov.mul_vec(&z);
    g.mean
        .iter()
        .zip(&sz)
        .map(|(m, v)| m + at.alpha * v)
        .collect()
}

/// RK4 integration of the EDM PF-ODE from σ_s to σ_t (both > 0) in u = ln σ, where
/// dx/du = σ dx/dσ = x − D(x, σ).
fn rk4_edm(
    g: &Gaussian,
    cov: &Mat,
    x: &[f64],
    sigma_s: f64,
    sigma_t: f64,
    steps: usize,
) -> Vec<f64> {
    let f = |x: &[f64], u: f64| -> Vec<f64> {
        let dx = dense_denoise(g, cov, x, Noise::edm(u.exp()));
        x.iter().zip(&dx).map(|(a, b)| a - b).collect()
    };
    let add = |x: &[f64], k: &[f64], h: f64| -> Vec<f64> {
        x.iter().zip(k).map(|(a, b)| a + h * b).collect()
    };
    let (u0, u1) = (sigma_s.ln(), sigma_t.ln());
    let h = (u1 - u0) / steps as f64;
    let mut x = x.to_vec();
    for i in 0..steps {
        let u = u0 + i as f64 * h;
        let k1 = f(&x, u);
        let k2 = f(&add(&x, &k1, h / 2.0), u + h / 2.0);
        let k3 = f(&add(&x, &k2, h / 2.0), u + h / 2.0);
        let k4 = f(&add(&x, &k3, h), u + h);
        for j in 0..x.len() {
            x[j] += h / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j]);
        }
    }
    x
}

/// A state at level `at`: α μ + (a typical marginal draw), here α μ + σ ε + α·(data-scale noise).
fn state(rng: &mut Rng, g: &Gaussian, at: Noise) -> Vec<f64> {
    g.mean
        .iter()
        .map(|m| at.alpha * (m + rng.normal()) + at.sigma * rng.normal())
        .collect()
}

const RK4_STEPS: usize = 4000;
const RK4_TOL: f64 = 1e-6;

// ---------------------------------------------------------------------------------------------
// Exactness against the ODE.

#[test]
fn skip_equals_rk4_integration_of_the_edm_ode() {
    let mut rng = Rng::new(10);
    for (name, g) in models() {
        let cov = covariance(&g);
        // The last pair runs backwards (inversion towards noise).
        for &(s, t) in &[
            (80.0, 19.4),
            (80.0, 0.5),
            (5.0, 0.02),
            (0.3, 0.01),
            (0.4, 30.0),
        ] {
            let x = state(&mut rng, &g, Noise::edm(s));
            let exact = g.skip(&x, Noise::edm(s), Noise::edm(t));
            let ode = rk4_edm(&g, &cov, &x, s, t, RK4_STEPS);
            let err = rel_error(&exact, &ode);
            assert!(
                err <= RK4_TOL,
                "{name}: σ {s} → {t}: rel error {err:.3e} vs RK4"
            );
        }
    }
}

#[test]
fn skip_equals_the_dense_closed_form() {
    // x_t = α_t μ + C_t^{1/2} C_s^{-1/2} (x − α_s μ), C = α² Σ + σ² I: the map that carries
    // the marginal at s onto the marginal at t and commutes with Σ (matrix square roots by
    // Denman–Beavers, no eigendecomposition).
    let mut rng = Rng::new(12);
    for (name, g) in models() {
        let cov = covariance(&g);
        for &(s, t) in &[
            (Noise::vp(0.02), Noise::vp(0.7)),
            (Noise::flow(0.9), Noise::flow(0.25)),
            (Noise::edm(40.0), Noise::new(0.8, 0.3)),
        ] {
            let x = state(&mut rng, &g, s);
            let m = marginal_cov(&cov, t)
                .sqrt_spd()
                .mul(&marginal_cov(&cov, s).sqrt_spd().inverse());
            let y: Vec<f64> = x
                .iter()
                .zip(&g.mean)
                .map(|(a, m)| a - s.alpha * m)
                .collect();
            let dense: Vec<f64> = m
                .mul_vec(&y)
                .iter()
                .zip(&g.mean)
                .map(|(v, mu)| t.alpha * mu + v)
                .collect();
            let err = rel_error(&g.skip(&x, s, t), &dense);
            assert!(err <= 1e-10, "{name}: {s:?} → {t:?}: rel error {err:.3e}");
        }
    }
}

#[test]
fn vp_and_flow_levels_match_the_edm_form_after_rescaling() {
    // For x_t = α x0 + σ ε, x / α is the EDM state at σ / α: the VP and flow PF-ODEs are the
    // EDM one in rescaled coordinates, so skip_vp(x) = α_t · ODE_edm(x / α_s, σ_s/α_s → σ_t/α_t).
    let mut rng = Rng::new(13);
    let schedules: [(&str, Vec<Noise>); 2] = [
        ("vp", [0.001, 0.05, 0.3, 0.8, 0.99].map(Noise::vp).to_vec()),
        (
            "flow",
            [0.995, 0.8, 0.5, 0.2, 0.01].map(Noise::flow).to_vec(),
        ),
    ];
    for (name, g) in models() {
        let cov = covariance(&g);
        for (kind, levels) in &schedules {
            let s = levels[0];
            let x = state(&mut rng, &g, s);
            let x_edm: Vec<f64> = x.iter().map(|v| v / s.alpha).collect();
            for &t in &levels[1..] {
                let got = g.skip(&x, s, t);
                let via_edm: Vec<f64> = g
                    .skip(&x_edm, Noise::edm(s.edm_sigma()), Noise::edm(t.edm_sigma()))
                    .iter()
                    .map(|v| t.alpha * v)
                    .collect();
                let err = rel_error(&got, &via_edm);
                assert!(err <= 1e-12, "{name} {kind} {t:?}: vs EDM form {err:.3e}");
                let ode: Vec<f64> =
                    rk4_edm(&g, &cov, &x_edm, s.edm_sigma(), t.edm_sigma(), RK4_STEPS)
                        .iter()
                        .map(|v| t.alpha * v)
                        .collect();
                let err = rel_error(&got, &ode);
                assert!(err <= RK4_TOL, "{name} {kind} {t:?}: vs RK4 {err:.3e}");
            }
        }
    }
}

#[test]
fn pure_noise_start_matches_the_limit() {
    // Flow t = 1 is α = 0: no signal at all. The jump from there must be the limit of jumps
    // from ever noisier levels, and equal the dense map C_t^{1/2} x / σ_s + α_t μ.
    let mut rng = Rng::new(14);
    for (name, g) in models() {
        let cov = covariance(&g);
        let s = Noise::flow(1.0);
        assert_eq!(s.alpha, 0.0);
        let x = rng.normals(g.dim());
        for &t in &[Noise::flow(0.6), Noise::flow(0.1), Noise::edm(2.0)] {
            let got = g.skip(&x, s, t);
            assert!(got.iter().all(|v| v.is_finite()), "{name}: non-finite");
            let dense: Vec<f64> = marginal_cov(&cov, t)
                .sqrt_spd()
                .mul_vec(&x)
                .iter()
                .zip(&g.mean)
                .map(|(v, m)| v / s.sigma + t.alpha * m)
                .collect();
            let err = rel_error(&got, &dense);
            assert!(
                err <= 1e-10,
                "{name}: pure noise → {t:?} vs dense {err:.3e}"
            );

            // The same state read at flow level 1 − δ (δ = 1e-9): EDM σ = (1−δ)/δ ≈ 1e9,
            // integrated by RK4 in the EDM form and rescaled.
            let near = Noise::flow(1.0 - 1e-9);
            let x_edm: Vec<f64> = x.iter().map(|v| v / near.alpha).collect();
            let ode: Vec<f64> = rk4_edm(
                &g,
                &cov,
                &x_edm,
                near.edm_sigma(),
                t.edm_sigma(),
                3 * RK4_STEPS,
            )
            .iter()
            .map(|v| t.alpha * v)
            .collect();
            let err = rel_error(&got, &ode);
            assert!(
                err <= RK4_TOL,
                "{name}: pure noise → {t:?} vs RK4 {err:.3e}"
            );
        }
    }
}

#[test]
fn skip_to_sigma_zero_is_the_limit_of_the_ode() {
    let mut rng = Rng::new(15);
    for (name, g) in models() {
        let cov = covariance(&g);
        for &s in &[Noise::edm(80.0), Noise::vp(0.3), Noise::flow(0.7)] {
            let t = Noise::new(1.0, 0.0);
            let x = state(&mut rng, &g, s);
            let got = g.skip(&x, s, t);
            assert!(got.iter().all(|v| v.is_finite()), "{name}: non-finite");
            // Directions of zero variance (λ = 0 modes, or λ⊥ = 0) shrink like σ: stopping at
            // σ = 1e-10 leaves them at ~1e-10 relative, well inside the tolerance.
            let x_edm: Vec<f64> = x.iter().map(|v| v / s.alpha).collect();
            let ode = rk4_edm(&g, &cov, &x_edm, s.edm_sigma(), 1e-10, 3 * RK4_STEPS);
            let err = rel_error(&got, &ode);
            assert!(err <= RK4_TOL, "{name}: {s:?} → σ 0 vs RK4 {err:.3e}");
            // At σ = 0 the state is a data point: the denoiser leaves it where it is.
            let err = rel_error(&g.denoise(&got, t), &got);
            assert!(err <= 1e-12, "{name}: D(x0) ≠ x0 at σ = 0: {err:.3e}");
        }
    }
}

#[test]
fn skip_there_and_back_is_the_identity() {
    let mut rng = Rng::new(16);
    let pairs = [
        (Noise::edm(80.0), Noise::edm(0.01)),
        (Noise::edm(0.2), Noise::edm(50.0)),
        (Noise::vp(0.001), Noise::vp(0.95)),
        (Noise::flow(0.97), Noise::flow(0.05)),
        (Noise::flow(1.0), Noise::vp(0.5)),
        (Noise::new(0.5, 3.0), Noise::new(2.0, 0.1)),
    ];
    for (name, g) in models() {
        for &(s, t) in &pairs {
            let x = state(&mut rng, &g, s);
            let back = g.skip(&g.skip(&x, s, t), t, s);
            let err = rel_error(&back, &x);
            assert!(err <= 1e-10, "{name}: {s:?} ⇄ {t:?}: rel error {err:.3e}");
        }
    }
}

#[test]
fn skip_composes_along_the_path() {
    let mut rng = Rng::new(17);
    for (name, g) in models() {
        let (s, m, t) = (Noise::edm(60.0), Noise::vp(0.4), Noise::flow(0.1));
        let x = state(&mut rng, &g, s);
        let two = g.skip(&g.skip(&x, s, m), m, t);
        let err = rel_error(&two, &g.skip(&x, s, t));
        assert!(err <= 1e-12, "{name}: s→m→t vs s→t {err:.3e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics: the skip carries the marginal at s onto the marginal at t.

/// Largest z-score, over every mean entry and covariance entry, of the sample moments of
/// `xs` against a Gaussian with mean `mu` and covariance `c`. Standard errors: √(C_ii / N) for
/// the mean and √((C_ii C_jj + C_ij²) / N) for the covariance (Gaussian fourth moments).
fn max_z(xs: &[Vec<f64>], mu: &[f64], c: &Mat) -> f64 {
    let (n, d) = (xs.len() as f64, mu.len());
    let mean: Vec<f64> = (0..d)
        .map(|i| xs.iter().map(|x| x[i]).sum::<f64>() / n)
        .collect();
    let mut worst: f64 = 0.0;
    for i in 0..d {
        worst = worst.max((mean[i] - mu[i]).abs() / (c.at(i, i) / n).sqrt());
        for j in 0..=i {
            let cov = xs
                .iter()
                .map(|x| (x[i] - mean[i]) * (x[j] - mean[j]))
                .sum::<f64>()
                / (n - 1.0);
            let se = ((c.at(i, i) * c.at(j, j) + c.at(i, j).powi(2)) / n).sqrt();
            worst = worst.max((cov - c.at(i, j)).abs() / se);
        }
    }
    worst
}

/// An exact draw of x0 from the model, by its definition: μ + Σ_k √λ_k z_k u_k plus
/// √λ⊥ times the part of an isotropic normal off span(U).
fn draw(rng: &mut Rng, g: &Gaussian) -> Vec<f64> {
    let z = rng.normals(g.dim());
    let mut x: Vec<f64> = g
        .mean
        .iter()
        .zip(&z)
        .map(|(m, zi)| m + g.residual_var.sqrt() * zi)
        .collect();
    for (u, &l) in g.eigvecs.iter().zip(&g.eigvals) {
        let p = dot(u, &z);
        let zk = rng.normal();
        x.iter_mut()
            .zip(u)
            .for_each(|(xi, ui)| *xi += (l.sqrt() * zk - g.residual_var.sqrt() * p) * ui);
    }
    x
}

#[test]
fn skipped_samples_have_the_marginal_moments() {
    const N: usize = 20_000;
    // With d(d+3)/2 ≈ 90 entries, a correct map has a largest |z| near 3; 5 leaves margin
    // at fixed seeds; the same samples read against a level with twice the noise score above 20.
    const Z_MAX: f64 = 5.0;
    let mut rng = Rng::new(18);
    for (name, g) in models() {
        let cov = covariance(&g);
        for &(s, t) in &[
            (Noise::edm(80.0), Noise::edm(0.3)),
            (Noise::vp(0.05), Noise::vp(0.9)),
            (Noise::flow(1.0), Noise::flow(0.2)),
        ] {
            let mut skipped = Vec::with_capacity(N);
            for _ in 0..N {
                let x0 = draw(&mut rng, &g);
                let xs: Vec<f64> = x0
                    .iter()
                    .map(|v| s.alpha * v + s.sigma * rng.normal())
                    .collect();
                skipped.push(g.skip(&xs, s, t));
            }
            let mu_t: Vec<f64> = g.mean.iter().map(|m| t.alpha * m).collect();
            let z = max_z(&skipped, &mu_t, &marginal_cov(&cov, t));
            assert!(z <= Z_MAX, "{name}: {s:?} → {t:?}: max z-score {z:.2}");
            // Power: the same samples against the marginal of a level with twice the noise.
            let wrong = Noise::new(t.alpha, 2.0 * t.sigma);
            let z_wrong = max_z(&skipped, &mu_t, &marginal_cov(&cov, wrong));
            assert!(
                z_wrong > 4.0 * Z_MAX,
                "{name}: test cannot tell {t:?} from {wrong:?} (z {z_wrong:.2})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Denoiser, ε, score, x0 along the jump, commitment.

fn levels_for_denoise() -> Vec<Noise> {
    vec![
        Noise::edm(80.0),
        Noise::edm(1.3),
        Noise::edm(0.002),
        Noise::vp(0.5),
        Noise::flow(0.97),
        Noise::new(2.0, 0.7),
    ]
}

/// Accuracy to expect from a dense LU solve with α² Σ + σ² I: a small multiple of the unit
/// roundoff times its condition number (which reaches ~1e6 at σ = 0.002 with zero-variance
/// directions), never looser than 1e-12.
fn solve_tol(g: &Gaussian, at: Noise) -> f64 {
    let vars = g.eigvals.iter().chain(std::iter::once(&g.residual_var));
    let (lo, hi) = vars.fold((f64::INFINITY, 0.0f64), |(lo, hi), &l| {
        let v = at.marginal_std(l).powi(2);
        (lo.min(v), hi.max(v))
    });
    (64.0 * f64::EPSILON * hi / lo).max(1e-12)
}

#[test]
fn denoiser_is_the_dense_posterior_mean() {
    let mut rng = Rng::new(19);
    for (name, g) in models() {
        let cov = covariance(&g);
        for at in levels_for_denoise() {
            let x = state(&mut rng, &g, at);
            let err = rel_error(&g.denoise(&x, at), &dense_denoise(&g, &cov, &x, at));
            let tol = solve_tol(&g, at);
            assert!(
                err <= tol,
                "{name} at {at:?}: rel error {err:.3e} > {tol:.1e}"
            );
        }
    }
}

#[test]
fn denoiser_at_pure_noise_is_the_mean_and_at_sigma_zero_projects() {
    let mut rng = Rng::new(20);
    for (name, g) in models() {
        let x = rng.normals(g.dim());
        let err = rel_error(&g.denoise(&x, Noise::flow(1.0)), &g.mean);
        assert!(err == 0.0, "{name}: D at α = 0 is not the mean ({err:.3e})");
        // At σ = 0 the posterior mean keeps the part of x/α inside the support of Σ and puts
        // the mean on the rest (directions of zero variance).
        let at = Noise::new(2.0, 0.0);
        let got = g.denoise(&x, at);
        let cov = covariance(&g);
        let y: Vec<f64> = x
            .iter()
            .zip(&g.mean)
            .map(|(a, m)| a / at.alpha - m)
            .collect();
        let proj = range_projector(&cov);
        let want: Vec<f64> = proj
            .mul_vec(&y)
            .iter()
            .zip(&g.mean)
            .map(|(v, m)| v + m)
            .collect();
        let err = rel_error(&got, &want);
        assert!(err <= 1e-9, "{name}: D at σ = 0: rel error {err:.3e}");
    }
}

#[test]
fn eps_and_score_are_the_gaussian_ones() {
    // For the Gaussian marginal N(α μ, C), C = α² Σ + σ² I: score = −C⁻¹ (x − α μ) and
    // E[ε | x] = −σ score. Both by dense solve, independent of the denoiser.
    let mut rng = Rng::new(21);
    for (name, g) in models() {
        let cov = covariance(&g);
        for at in levels_for_denoise() {
            let x = state(&mut rng, &g, at);
            let y: Vec<f64> = x
                .iter()
                .zip(&g.mean)
                .map(|(a, m)| a - at.alpha * m)
                .collect();
            let score: Vec<f64> = marginal_cov(&cov, at)
                .solve(&y)
                .iter()
                .map(|v| -v)
                .collect();
            let eps: Vec<f64> = score.iter().map(|v| -at.sigma * v).collect();
            // ε and the score are x − α D(x) scaled: that subtraction cancels digits by the
            // factor ‖x‖ / ‖x − α D‖ (~1/σ at small σ), which adds to the solve's error.
            let cancel = norm(&x) / (at.sigma * norm(&eps));
            let tol = solve_tol(&g, at) + 64.0 * f64::EPSILON * cancel;
            let e = rel_error(&g.score(&x, at).unwrap(), &score);
            assert!(
                e <= tol,
                "{name} at {at:?}: score rel error {e:.3e} > {tol:.1e}"
            );
            let e = rel_error(&g.eps(&x, at).unwrap(), &eps);
            assert!(
                e <= tol,
                "{name} at {at:?}: eps rel error {e:.3e} > {tol:.1e}"
            );
        }
        let x = rng.normals(g.dim());
        assert!(matches!(
            g.eps(&x, Noise::new(1.0, 0.0)),
            Err(gaussskip::Error::InvalidNoise { .. })
        ));
        assert!(matches!(
            g.score(&x, Noise::new(1.0, 0.0)),
            Err(gaussskip::Error::InvalidNoise { .. })
        ));
    }
}

#[test]
fn x0_along_jump_is_the_denoiser_after_the_skip() {
    // SPEC §4: predicted x0 at level t along the jump from s = D_t(skip(x, s → t)), here with
    // the skip from RK4 and D from the dense posterior mean.
    let mut rng = Rng::new(22);
    for (name, g) in models() {
        let cov = covariance(&g);
        for &(s, t) in &[(80.0, 10.0), (20.0, 0.4), (3.0, 0.05)] {
            let x = state(&mut rng, &g, Noise::edm(s));
            let ode = rk4_edm(&g, &cov, &x, s, t, RK4_STEPS);
            let want = dense_denoise(&g, &cov, &ode, Noise::edm(t));
            let got = g.x0_along_jump(&x, Noise::edm(s), Noise::edm(t));
            let err = rel_error(&got, &want);
            assert!(err <= RK4_TOL, "{name}: {s} → {t}: rel error {err:.3e}");
        }
        for &(s, t) in &[
            (Noise::vp(0.1), Noise::flow(0.3)),
            (Noise::flow(1.0), Noise::vp(0.6)),
        ] {
            let x = state(&mut rng, &g, s);
            let want = dense_denoise(&g, &cov, &g.skip(&x, s, t), t);
            let err = rel_error(&g.x0_along_jump(&x, s, t), &want);
            assert!(err <= 1e-11, "{name}: {s:?} → {t:?}: rel error {err:.3e}");
        }
    }
}

#[test]
fn commitment_is_the_fraction_of_the_final_x0_coefficient() {
    // Along one jump from s, the x0-prediction's coefficient on mode k at level t, divided by
    // its coefficient at the end (σ = 0), is ρ_k(t) = √(α² λ_k / s_k²) (SPEC §4).
    let mut rng = Rng::new(23);
    for (name, g) in models() {
        let s = Noise::edm(80.0);
        let x = state(&mut rng, &g, s);
        let end = g.x0_along_jump(&x, s, Noise::edm(0.0));
        let coeff = |v: &[f64], u: &[f64]| dot(u, v) - dot(u, &g.mean);
        for t in [
            Noise::edm(20.0),
            Noise::edm(1.0),
            Noise::vp(0.2),
            Noise::flow(0.5),
        ] {
            let now = g.x0_along_jump(&x, s, t);
            let rho = g.commitment(t);
            assert_eq!(rho.len(), g.eigvals.len());
            for (k, (u, &l)) in g.eigvecs.iter().zip(&g.eigvals).enumerate() {
                let want =
                    (t.alpha * t.alpha * l / (t.alpha * t.alpha * l + t.sigma * t.sigma)).sqrt();
                assert!((rho[k] - want).abs() <= 1e-15, "{name}: ρ_{k} formula");
                if l > 0.0 {
                    let ratio = coeff(&now, u) / coeff(&end, u);
                    assert!(
                        (ratio - rho[k]).abs() <= 1e-9,
                        "{name} {t:?} mode {k}: coefficient ratio {ratio} vs ρ {}",
                        rho[k]
                    );
                } else {
                    assert_eq!(rho[k], 0.0, "{name}: a zero-variance mode never commits");
                }
            }
            // Outline first, details later: larger variance, larger commitment.
            assert!(
                rho.windows(2).all(|w| w[0] >= w[1]),
                "{name}: ρ not ordered"
            );
        }
        // Half committed by power where σ/α = √λ_k.
        for (k, &l) in g.eigvals.iter().enumerate().filter(|(_, &l)| l > 0.0) {
            let rho = g.commitment(Noise::new(0.6, 0.6 * l.sqrt()))[k];
            assert!(
                (rho * rho - 0.5).abs() <= 1e-12,
                "{name} mode {k}: ρ² = {}",
                rho * rho
            );
        }
    }
}
