//! The two f32 matrix products of the CPU path, with AVX2/FMA register-blocked kernels
//! (x86_64 only; elsewhere, and on x86_64 CPUs without AVX2/FMA, faer computes them).
//!
//! - Projection `p = y e^T` (`rows x r`): both operands run along `dim`, so each kernel call
//!   forms a 4 x 3 block of dot products, eight lanes of `dim` at a time, from four rows of y
//!   and three rows of eigenvectors read in place (no copy of the eigenvectors).
//! - Back-projection `out = q e` (`rows x d`): a 6 x 16 block of outputs per kernel call,
//!   from a broadcast of q and two 8-lane loads of a row of eigenvectors per mode; where the
//!   CPU has AVX-512, a 6 x 32 block from two 16-lane loads (the same sums in the same
//!   order, so the same bits, at up to twice the multiply-adds per cycle on CPUs whose
//!   AVX-512 units are full width).
//!
//! From `packed_rows()` rows on, the projection runs on the back-projection's kernel too, with
//! y in place of q and the eigenvectors copied transposed into its panels.
//!
//! Both run along their inner dimension in blocks (`KP`, `KC`), so that what a kernel call
//! reads most stays in the first-level cache (four rows of y, or a `KC x 16` panel of
//! eigenvectors) and what it streams in the second (a chunk of eigenvector rows, or a chunk
//! of rows of q), and each kernel call is long enough to pay for its start and end. The dot
//! products copy the rows of y once per call into that blocked layout, padded with zeros to
//! whole kernel blocks; the 6 x 16 kernel reads its six rows of q (or y) in place, and the
//! panels of eigenvectors are copied as they are used (row k of a panel is 16 contiguous
//! floats, not a 64-byte piece of a row `d` floats long: at `d` a multiple of 1024 every such
//! piece of a block would fall in the same cache set). The blocks are cut as evenly as whole
//! 8-lane steps allow.
//!
//! Threads take blocks of modes (projection) or of columns (back-projection); each output
//! element is summed by one thread, in the same order whatever the number of threads, so
//! results do not depend on it.

use faer::Par;
use rayon::prelude::*;

use crate::error::{try_vec, Error, Result};

/// Longest block of the inner dimension: of the back-projection (a `KC x 16` panel of
/// eigenvectors is 16 KB), of the projection (four rows of y are 16 KB).
const KC: usize = 256;
const KP: usize = 1024;

/// Row panels (six rows) of q taken together over a strip of eigenvectors: their `KC` steps
/// (96 KB) stay in the second-level cache while the panels of the strip pass over them.
const MP: usize = 16;

/// Largest output of a back-projection job (bytes) taken whole for each block of modes:
/// larger ones are taken a strip at a time, which reads the eigenvectors in shorter pieces.
const JOB_OUTPUT_CACHED: usize = 256 << 10;

/// Columns of eigenvectors copied into panels at a time (each row read 512 bytes at once).
const NB: usize = 8 * BC;

/// The length of the blocks of `0..n` (at most `max`, a multiple of 8): as even as whole
/// 8-lane steps allow, so that no block is much shorter than the others.
fn block_len(n: usize, max: usize) -> usize {
    n.div_ceil(n.div_ceil(max)).next_multiple_of(8)
}

/// Modes of the projection taken together over every row of y: their `KP` columns (144 KB)
/// stay in the second-level cache while four rows of y at a time pass over them.
const PCHUNK: usize = 36;

/// Projection kernel: rows of y by rows of eigenvectors.
const PY: usize = 4;
const PE: usize = 3;

/// Back-projection kernel: rows of q by columns of the output.
const BR: usize = 6;
const BC: usize = 16;

/// Blocks per pool thread (see `cpu::BLOCKS_PER_THREAD`).
const BLOCKS_PER_THREAD: usize = 4;

/// Floats of slack for a buffer to start on a 64-byte boundary: a 32-byte load that crosses
/// a cache line costs two (allocations of this size start 16 bytes past a page).
const ALIGN: usize = 16;

/// The `len` floats of `buf` from its first 64-byte boundary.
fn aligned(buf: &mut [f32], len: usize) -> &mut [f32] {
    let start = buf.as_ptr().align_offset(64).min(ALIGN);
    &mut buf[start..start + len]
}

/// True when this CPU has the instructions of the kernels.
pub(crate) fn available() -> bool {
    super::cpu_small::available()
}

/// True when this CPU also runs the 6 x 32 AVX-512 form of the back-projection kernel (on
/// CPUs with full-width AVX-512 units, twice the multiply-adds per cycle).
fn wide_available() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

/// Splits `0..n` into ranges of a multiple of `unit` (at least `min`), about
/// `BLOCKS_PER_THREAD` per thread of `par`; the last range takes the rest.
fn ranges(n: usize, unit: usize, min: usize, par: Par) -> Vec<std::ops::Range<usize>> {
    let blocks = match par {
        Par::Seq => 1,
        Par::Rayon(t) => t.get() * BLOCKS_PER_THREAD,
    };
    let width = n.div_ceil(blocks).max(min).next_multiple_of(unit);
    (0..n.div_ceil(width))
        .map(|b| b * width..((b + 1) * width).min(n))
        .collect()
}

/// Runs `job` on every range, on the pool under `par`; the first error, if any.
fn each(
    ranges: Vec<std::ops::Range<usize>>,
    par: Par,
    job: impl Fn(std::ops::Range<usize>) -> Result<()> + Sync + Send,
) -> Result<()> {
    if par != Par::Seq && ranges.len() > 1 {
        ranges.into_par_iter().try_for_each(job)
    } else {
        ranges.into_iter().try_for_each(job)
    }
}

thread_local! {
    /// Each thread's panels of eigenvectors for the back-projection, kept from call to call
    /// (allocating and clearing them per call cost as much as a small call's arithmetic).
    static PANELS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's panel buffer (contents unspecified), starting
/// on a 64-byte boundary.
fn with_panels<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    PANELS.with_borrow_mut(|buf| {
        if buf.len() < len + ALIGN {
            let more = len + ALIGN - buf.len();
            buf.try_reserve_exact(more)
                .map_err(|_| Error::OutOfMemory(format!("the eigenvector panels: {len} floats")))?;
            buf.resize(len + ALIGN, 0.0);
        }
        Ok(f(aligned(buf, len)))
    })
}

/// An output shared by the threads, each writing elements no other thread writes.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the jobs that hold copies write disjoint elements (disjoint modes or columns) and
// the call waits for all of them before the output is used again.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The element at `offset` (a method, so that closures capture the whole `Shared`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `p = y e^T` for row-major `e` (`r x d`), `y` (`rows x d`) and `p` (`rows x r`): by dot
/// products on eigenvector rows read in place for few rows, by the 6 x 16 kernel of the
/// back-projection over transposed panels of eigenvectors for many (their copy is then
/// shared by enough rows, and that kernel runs at a higher share of the peak: 85 % against
/// 65 % of the FMA rate on the test machine).
///
/// # Errors
/// `OutOfMemory` when the blocked copy of y cannot be allocated (`p` untouched).
///
/// # Panics
/// When the sizes do not agree or [`available`] is false.
pub(crate) fn project(
    e: &[f32],
    d: usize,
    y: &[f32],
    rows: usize,
    p: &mut [f32],
    par: Par,
) -> Result<()> {
    assert!(available() && d > 0 && e.len().is_multiple_of(d));
    let r = e.len() / d;
    assert!(y.len() == rows * d && p.len() == rows * r);
    if rows < packed_rows() {
        return project_dots(e, d, y, rows, p, par);
    }
    packed(y, rows, d, r, p, par, |ks, s0, sw, kb, panels| {
        // SAFETY: available() was asserted; `packed` asks for columns ks of `e` (ks.end <= d)
        // and rows s0..s0 + sw (<= r), into sw.div_ceil(BC) panels of kb >= ks.len() steps.
        unsafe { pack_transposed(e, d, ks, s0, sw, kb, panels) }
    })
}

/// Fewest rows for which the projection copies the eigenvectors into transposed panels and
/// runs on the 6 x 16 kernel: earlier with its AVX-512 form (measured at d = 784 to 12288:
/// from 16 rows on it was 5 to 15 % faster than the dot products, with AVX2 alone from 48).
/// Between the two, whether a CPU has AVX-512 changes the order of the projection's sums.
fn packed_rows() -> usize {
    if wide_available() {
        16
    } else {
        48
    }
}

/// The projection by dot products (see [`project`]).
fn project_dots(
    e: &[f32],
    d: usize,
    y: &[f32],
    rows: usize,
    p: &mut [f32],
    par: Par,
) -> Result<()> {
    let r = e.len() / d;
    let padded = rows.next_multiple_of(PY);
    let kb = block_len(d, KP);
    let nblocks = d.div_ceil(kb);
    // Block c of y: `padded` rows of KP floats, columns c*KP.. of y, zeros past the end.
    let mut yb = try_vec(nblocks * padded * KP + ALIGN, 0f32, "the blocked rows")?;
    let yb = aligned(&mut yb, nblocks * padded * KP);
    for (c, block) in yb.chunks_mut(padded * KP).enumerate() {
        let cols = c * kb..((c + 1) * kb).min(d);
        for (i, dst) in block.chunks_mut(KP).take(rows).enumerate() {
            dst[..cols.len()].copy_from_slice(&y[i * d + cols.start..i * d + cols.end]);
        }
    }
    let out = Shared(p.as_mut_ptr());
    let job = |modes: std::ops::Range<usize>| {
        for c in 0..nblocks {
            let (k0, kc) = (c * kb, kb.min(d - c * kb));
            let block = &yb[c * padded * KP..(c + 1) * padded * KP];
            for chunk in modes.clone().step_by(PCHUNK) {
                let chunk = chunk..(chunk + PCHUNK).min(modes.end);
                for i0 in (0..rows).step_by(PY) {
                    let ys = &block[i0 * KP..(i0 + PY) * KP];
                    let mut m = chunk.start;
                    while m < chunk.end {
                        let ne = PE.min(chunk.end - m);
                        let rows_e = [m, (m + 1).min(m + ne - 1), (m + 2).min(m + ne - 1)];
                        // SAFETY: available() was asserted; each eigenvector row holds
                        // k0 + kc elements, each of the PY rows of `ys` KP >= kc (zeros past kc).
                        let sums = unsafe { dot_block(e, d, rows_e, k0, kc, ys) };
                        for (di, row) in sums.iter().enumerate().take(rows - i0) {
                            for (dj, &v) in row.iter().enumerate().take(ne) {
                                // SAFETY: row i0 + di < rows, mode m + dj < modes.end <= r;
                                // this job alone writes the modes of its range.
                                unsafe {
                                    let at = out.at((i0 + di) * r + m + dj);
                                    *at = if c == 0 { v } else { *at + v };
                                }
                            }
                        }
                        m += ne;
                    }
                }
            }
        }
    };
    each(ranges(r, PE * 8, PE * 8, par), par, |modes| {
        job(modes);
        Ok(())
    })
}

/// `out = q e` for row-major `e` (`r x d`), `q` (`rows x r`) and `out` (`rows x d`).
///
/// # Errors
/// `OutOfMemory` when the blocked copy of q cannot be allocated (`out` untouched).
///
/// # Panics
/// When the sizes do not agree or [`available`] is false.
pub(crate) fn back_project(
    e: &[f32],
    d: usize,
    q: &[f32],
    rows: usize,
    out: &mut [f32],
    par: Par,
) -> Result<()> {
    assert!(available() && d > 0 && e.len().is_multiple_of(d));
    let r = e.len() / d;
    assert!(q.len() == rows * r && out.len() == rows * d);
    packed(q, rows, r, d, out, par, |ks, s0, sw, kb, panels| {
        // SAFETY: available() was asserted; `packed` asks for rows ks of `e` (ks.end <= r)
        // and columns s0..s0 + sw (<= d), into sw.div_ceil(BC) panels of kb >= ks.len() steps.
        unsafe { pack_strip(e, d, ks, s0, sw, kb, panels) }
    })
}

/// `out = a b` (`rows x n`) for row-major `a` (`rows x k`), with the 6 x 16 kernel: `a` is
/// read in place, six rows at a time, `b` copied into panels of 16 columns by
/// `pack(ks, s0, sw, kb, panels)`, which fills panel j with steps ks (kb floats apart, 16
/// each) of columns s0 + 16j.. of b, zeros past column s0 + sw.
fn packed(
    a: &[f32],
    rows: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
    par: Par,
    pack: impl Fn(std::ops::Range<usize>, usize, usize, usize, &mut [f32]) + Sync,
) -> Result<()> {
    let (r, d, q) = (k, n, a);
    let panels = rows.div_ceil(BR);
    let kb = block_len(r, KC);
    let nblocks = r.div_ceil(kb);
    let ranges = ranges(d, BC, 8 * BC, par);
    let dst = Shared(out.as_mut_ptr());
    let wide = wide_available();
    let job = |cols: std::ops::Range<usize>, panels_e: &mut [f32]| {
        // Block c of modes on the strip of columns s0..: every output row of the strip.
        let mut step = |s0: usize, c: usize| {
            let sw = NB.min(cols.end - s0);
            let (k0, kc) = (c * kb, kb.min(r - c * kb));
            pack(k0..k0 + kc, s0, sw, kb, panels_e);
            let npanels = sw.div_ceil(BC);
            for t0 in (0..panels).step_by(MP) {
                let mut j = 0;
                while j < npanels {
                    // Two panels at once where the CPU has AVX-512.
                    let n = if wide && j + 1 < npanels { 2 } else { 1 };
                    let j0 = s0 + j * BC;
                    let w = (n * BC).min(s0 + sw - j0);
                    let panel = |j: usize| &panels_e[j * kb * BC..(j + 1) * kb * BC];
                    for t in t0..(t0 + MP).min(panels) {
                        let h = BR.min(rows - t * BR);
                        // SAFETY: available() was asserted, and AVX-512 where n is 2; rows
                        // t*BR..t*BR + h of `a` hold columns k0..k0 + kc (k0 + kc <= r) and
                        // each panel kc steps; rows t*BR..t*BR + h and columns j0..j0 + w of
                        // `out` exist (j0 + w <= cols.end <= d); this job alone writes its
                        // columns.
                        unsafe {
                            let at_a = q.as_ptr().add(t * BR * r + k0);
                            let at = dst.at(t * BR * d + j0);
                            if n == 2 {
                                let [left, right] =
                                    axpy_block_wide(at_a, r, h, panel(j), panel(j + 1), kc);
                                store_tile(&left, at, d, h, BC, c == 0);
                                store_tile(&right, at.add(BC), d, h, w - BC, c == 0);
                            } else {
                                let sums = axpy_block(at_a, r, h, panel(j), kc);
                                store_tile(&sums, at, d, h, w, c == 0);
                            }
                        }
                    }
                    j += n;
                }
            }
        };
        // Each block of modes adds to the job's whole output: where that output would not
        // stay in the cache from one block to the next, finish each strip before the next.
        if rows * cols.len() * 4 > JOB_OUTPUT_CACHED {
            for s0 in cols.clone().step_by(NB) {
                (0..nblocks).for_each(|c| step(s0, c));
            }
        } else {
            for c in 0..nblocks {
                cols.clone().step_by(NB).for_each(|s0| step(s0, c));
            }
        }
    };
    each(ranges, par, |cols| {
        with_panels(kb * NB, |panels| job(cols, panels))
    })
}

/// Writes (`first`) or adds `sums` to the `h x w` tile of a row-major matrix of row length
/// `d` that starts at `at`.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_tile(
    sums: &[[f32; BC]; BR],
    at: *mut f32,
    d: usize,
    h: usize,
    w: usize,
    first: bool,
) {
    use std::arch::x86_64::*;
    for (i, row) in sums.iter().enumerate().take(h) {
        let to = at.add(i * d);
        if w == BC {
            let (mut v0, mut v1) = (
                _mm256_loadu_ps(row.as_ptr()),
                _mm256_loadu_ps(row.as_ptr().add(8)),
            );
            if !first {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(to));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(to.add(8)));
            }
            _mm256_storeu_ps(to, v0);
            _mm256_storeu_ps(to.add(8), v1);
        } else {
            for (j, &v) in row.iter().enumerate().take(w) {
                *to.add(j) = if first { v } else { *to.add(j) + v };
            }
        }
    }
}

/// Copies columns `s0..s0 + sw` of eigenvector rows `ks` into panels of `BC` columns:
/// panel j holds `kb` steps of BC floats, step k = e[ks.start + k][s0 + j*BC..], with zeros
/// past column `sw`.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_strip(
    e: &[f32],
    d: usize,
    ks: std::ops::Range<usize>,
    s0: usize,
    sw: usize,
    kb: usize,
    panels: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(ks.end * d <= e.len() && s0 + sw <= d && sw.div_ceil(BC) * kb * BC <= panels.len());
    let whole = sw / BC;
    for (k, row) in ks.clone().enumerate() {
        let src = e.as_ptr().add(row * d + s0);
        let dst = panels.as_mut_ptr().add(k * BC);
        for j in 0..whole {
            let (from, to) = (src.add(j * BC), dst.add(j * kb * BC));
            _mm256_storeu_ps(to, _mm256_loadu_ps(from));
            _mm256_storeu_ps(to.add(8), _mm256_loadu_ps(from.add(8)));
        }
        if whole * BC < sw {
            let to = dst.add(whole * kb * BC);
            for j in 0..BC {
                let col = whole * BC + j;
                *to.add(j) = if col < sw { *src.add(col) } else { 0.0 };
            }
        }
    }
}

/// Copies rows `s0..s0 + sw` of eigenvectors, columns `ks`, transposed into panels of `BC`
/// rows: panel j holds `kb` steps of BC floats, step k = e[s0 + j*BC + c][ks.start + k] for
/// c in 0..BC, with zeros past row `sw`. Blocks of 8 x 8 are transposed in registers.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_transposed(
    e: &[f32],
    d: usize,
    ks: std::ops::Range<usize>,
    s0: usize,
    sw: usize,
    kb: usize,
    panels: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!((s0 + sw) * d <= e.len() && ks.end <= d && sw.div_ceil(BC) * kb * BC <= panels.len());
    let kc = ks.len();
    let (k8, m8) = (kc - kc % 8, sw - sw % 8);
    let dst = panels.as_mut_ptr();
    let slot = |m: usize, k: usize| (m / BC) * kb * BC + k * BC + m % BC;
    for m in (0..m8).step_by(8) {
        let src = e.as_ptr().add((s0 + m) * d + ks.start);
        for k in (0..k8).step_by(8) {
            let mut v = [_mm256_setzero_ps(); 8];
            for (i, vi) in v.iter_mut().enumerate() {
                *vi = _mm256_loadu_ps(src.add(i * d + k));
            }
            let t0 = _mm256_unpacklo_ps(v[0], v[1]);
            let t1 = _mm256_unpackhi_ps(v[0], v[1]);
            let t2 = _mm256_unpacklo_ps(v[2], v[3]);
            let t3 = _mm256_unpackhi_ps(v[2], v[3]);
            let t4 = _mm256_unpacklo_ps(v[4], v[5]);
            let t5 = _mm256_unpackhi_ps(v[4], v[5]);
            let t6 = _mm256_unpacklo_ps(v[6], v[7]);
            let t7 = _mm256_unpackhi_ps(v[6], v[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            // Column c of the block (step k + c) holds e[m..m + 8][k + c].
            let cols = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (c, col) in cols.iter().enumerate() {
                _mm256_storeu_ps(dst.add(slot(m, k + c)), *col);
            }
        }
        for k in k8..kc {
            for i in 0..8 {
                *dst.add(slot(m + i, k)) = *src.add(i * d + k);
            }
        }
    }
    // The last rows (fewer than 8), and zeros to the end of the last panel.
    for m in m8..sw.next_multiple_of(BC) {
        for k in 0..kc {
            *dst.add(slot(m, k)) = if m < sw {
                *e.get_unchecked((s0 + m) * d + ks.start + k)
            } else {
                0.0
            };
        }
    }
}

/// The dot products of `PY` rows of `ys` (each KP long, zeros past `kc`) with eigenvector
/// rows `rows_e` over columns `k0..k0 + kc`: `sums[i][j] = Σ_k ys[i][k] e[rows_e[j]][k0 + k]`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // indices over register arrays, unrolled
unsafe fn dot_block(
    e: &[f32],
    d: usize,
    rows_e: [usize; PE],
    k0: usize,
    kc: usize,
    ys: &[f32],
) -> [[f32; PE]; PY] {
    use std::arch::x86_64::*;
    debug_assert!(ys.len() == PY * KP && kc <= KP);
    let mut ep = [e.as_ptr(); PE];
    for (p, &m) in ep.iter_mut().zip(&rows_e) {
        debug_assert!(m * d + k0 + kc <= e.len());
        *p = e.as_ptr().add(m * d + k0);
    }
    let yp = ys.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); PE]; PY];
    let full = kc - kc % 8;
    let step = |acc: &mut [[__m256; PE]; PY], k: usize| {
        let mut ev = [_mm256_setzero_ps(); PE];
        for j in 0..PE {
            ev[j] = _mm256_loadu_ps(ep[j].add(k));
        }
        for i in 0..PY {
            let yv = _mm256_loadu_ps(yp.add(i * KP + k));
            for j in 0..PE {
                acc[i][j] = _mm256_fmadd_ps(yv, ev[j], acc[i][j]);
            }
        }
    };
    let mut k = 0;
    while k + 16 <= full {
        step(&mut acc, k);
        step(&mut acc, k + 8);
        k += 16;
    }
    if k < full {
        step(&mut acc, k);
    }
    if full < kc {
        // The last partial step: masked loads of the eigenvectors (y is zero past kc).
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((kc - full) as i32), lanes);
        let mut ev = [_mm256_setzero_ps(); PE];
        for j in 0..PE {
            ev[j] = _mm256_maskload_ps(ep[j].add(full), mask);
        }
        for i in 0..PY {
            let yv = _mm256_loadu_ps(yp.add(i * KP + full));
            for j in 0..PE {
                acc[i][j] = _mm256_fmadd_ps(yv, ev[j], acc[i][j]);
            }
        }
    }
    let mut sums = [[0f32; PE]; PY];
    for i in 0..PY {
        for j in 0..PE {
            sums[i][j] = hsum(acc[i][j]);
        }
    }
    sums
}

/// The sum of the eight lanes, in a fixed order.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Runs `step(k)` for k in `0..n` in order, four calls per loop test.
#[inline(always)]
fn by_fours(n: usize, mut step: impl FnMut(usize)) {
    let mut k = 0;
    while k + 4 <= n {
        step(k);
        step(k + 1);
        step(k + 2);
        step(k + 3);
        k += 4;
    }
    while k < n {
        step(k);
        k += 1;
    }
}

/// `sums[i][j] = Σ_k a[i * lda + k] panel[k * BC + j]` over `kc` steps, for the `h <= BR`
/// rows of `a` (row-major, rows `lda` floats apart, read in place); the sums of rows past
/// `h` repeat row `h - 1`.
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_block(
    a: *const f32,
    lda: usize,
    h: usize,
    panel: &[f32],
    kc: usize,
) -> [[f32; BC]; BR] {
    use std::arch::x86_64::*;
    debug_assert!((1..=BR).contains(&h) && kc <= lda && panel.len() >= kc * BC);
    let rows: [*const f32; BR] = std::array::from_fn(|i| a.add(i.min(h - 1) * lda));
    let bp = panel.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); 2]; BR];
    let step = |acc: &mut [[__m256; 2]; BR], k: usize| {
        let b0 = _mm256_loadu_ps(bp.add(k * BC));
        let b1 = _mm256_loadu_ps(bp.add(k * BC + 8));
        for (a, row) in acc.iter_mut().zip(&rows) {
            let qv = _mm256_broadcast_ss(&*row.add(k));
            a[0] = _mm256_fmadd_ps(qv, b0, a[0]);
            a[1] = _mm256_fmadd_ps(qv, b1, a[1]);
        }
    };
    by_fours(kc, |k| step(&mut acc, k));
    let mut sums = [[0f32; BC]; BR];
    for (s, a) in sums.iter_mut().zip(&acc) {
        _mm256_storeu_ps(s.as_mut_ptr(), a[0]);
        _mm256_storeu_ps(s.as_mut_ptr().add(8), a[1]);
    }
    sums
}

/// [`axpy_block`] on two panels side by side, with AVX-512: columns 0..16 of the result from
/// `panel0`, 16..32 from `panel1`. Each output is the same chain of fused multiply-adds, in
/// the same order, as in `axpy_block`: the two kernels give the same bits.
#[target_feature(enable = "avx512f")]
unsafe fn axpy_block_wide(
    a: *const f32,
    lda: usize,
    h: usize,
    panel0: &[f32],
    panel1: &[f32],
    kc: usize,
) -> [[[f32; BC]; BR]; 2] {
    use std::arch::x86_64::*;
    debug_assert!((1..=BR).contains(&h) && kc <= lda);
    debug_assert!(panel0.len() >= kc * BC && panel1.len() >= kc * BC);
    let rows: [*const f32; BR] = std::array::from_fn(|i| a.add(i.min(h - 1) * lda));
    let (p0, p1) = (panel0.as_ptr(), panel1.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; BR];
    let step = |acc: &mut [[__m512; 2]; BR], k: usize| {
        let b0 = _mm512_loadu_ps(p0.add(k * BC));
        let b1 = _mm512_loadu_ps(p1.add(k * BC));
        for (a, row) in acc.iter_mut().zip(&rows) {
            let qv = _mm512_set1_ps(*row.add(k));
            a[0] = _mm512_fmadd_ps(qv, b0, a[0]);
            a[1] = _mm512_fmadd_ps(qv, b1, a[1]);
        }
    };
    by_fours(kc, |k| step(&mut acc, k));
    let mut sums = [[[0f32; BC]; BR]; 2];
    for (i, a) in acc.iter().enumerate() {
        _mm512_storeu_ps(sums[0][i].as_mut_ptr(), a[0]);
        _mm512_storeu_ps(sums[1][i].as_mut_ptr(), a[1]);
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The AVX-512 kernel gives the bits of the AVX2 kernel on each of its two panels: rows
    /// read in place (every count up to six), step counts around the unrolling, values of
    /// mixed sign and size.
    #[test]
    fn wide_kernel_gives_the_bits_of_the_narrow_one() {
        if !available() || !wide_available() {
            eprintln!("skipped: this CPU has no AVX-512 (the wide kernel is not used here)");
            return;
        }
        let mut rng = Rng::new(11);
        let mut normals = |n: usize| -> Vec<f32> {
            rng.normals(n)
                .iter()
                .map(|&v| (v * 10f64.powf(v)) as f32)
                .collect()
        };
        let lda = 300;
        let a = normals(BR * lda);
        for kc in [1, 3, 4, 5, 17, 256] {
            let (p0, p1) = (normals(kc * BC), normals(kc * BC));
            for h in 1..=BR {
                for offset in [0, 7] {
                    // SAFETY: AVX2/FMA and AVX-512 were checked; h rows of lda floats hold
                    // offset + kc columns, each panel kc steps.
                    let (wide, narrow) = unsafe {
                        let at = a.as_ptr().add(offset);
                        (
                            axpy_block_wide(at, lda, h, &p0, &p1, kc),
                            [
                                axpy_block(at, lda, h, &p0, kc),
                                axpy_block(at, lda, h, &p1, kc),
                            ],
                        )
                    };
                    assert!(wide == narrow, "kc {kc} h {h} offset {offset}");
                }
            }
        }
    }
}
