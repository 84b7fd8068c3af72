//! Small batches on the CPU: both products of a call in one pass over the eigenvectors, with
//! AVX2/FMA (one row with one output: AVX-512 where the CPU has it, `cpu_small_wide`).
//!
//! With one to a few rows both products are matrix-vector products, and their time is the
//! time to stream the `rank x dim` eigenvectors (2.4 MB at d = r = 784, 50 MB at 12288 x 1024)
//! from memory. A mode's weighted projection `q_k = w_k (u_k . y)` needs only that mode's
//! row, so the back-projection `Σ_k q_k u_k` can take each row while the projection has just
//! brought it into the cache: the eigenvectors cross the memory bus once per call instead of
//! twice (two matrix-vector products, as a BLAS would run them, read them twice).
//!
//! The modes are cut into at most `MAX_PARTS` blocks whose sizes depend on the rank only;
//! each block sums its modes in order into its own partial output, and the partials are added
//! in block order: the result does not depend on the number of threads.
//!
//! Shapes: `e` is `r x d` row-major (row k = u_k); `y` is `rows x d`, `p` is `rows x r`;
//! output row `o` reads input row `src[o]` with the weights `w[o * r..(o + 1) * r]` and is
//! `acc[o * d..(o + 1) * d]`.

use std::sync::Mutex;

use crate::error::{try_vec, Result};

/// Largest batch the kernels take.
pub(crate) const MAX_ROWS: usize = 4;

/// Largest number of output rows (input rows times output slabs).
pub(crate) const MAX_OUTS: usize = 8;

/// Smallest model (rank x dim) they serve: below it (256 KB of eigenvectors) a call is too
/// short for either path to matter. At d = 784 (full rank and r = 196) they were 5 to 8 %
/// faster than the GEMM path, one thread each.
pub(crate) const MIN_MODEL: usize = 1 << 16;

/// Most blocks of modes (partial outputs) per call, and fewest modes per block.
const MAX_PARTS: usize = 16;
const MIN_BLOCK: usize = 32;

/// Whether the kernels take `rows` input rows giving `outs` output rows of a model with
/// `model_len` (rank x dim) eigenvector elements on this CPU.
pub(crate) fn serves(rows: usize, outs: usize, model_len: usize) -> bool {
    rows <= MAX_ROWS && outs <= MAX_OUTS && model_len >= MIN_MODEL && available()
}

/// True when this CPU has the instructions the kernels need.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The modes of block `b` of `parts` blocks over rank `r`.
fn block_modes(r: usize, b: usize) -> std::ops::Range<usize> {
    let size = r.div_ceil(parts(r));
    (b * size).min(r)..((b + 1) * size).min(r)
}

/// Number of blocks of modes for rank `r`.
fn parts(r: usize) -> usize {
    r.div_ceil(MIN_BLOCK).clamp(1, MAX_PARTS)
}

/// How [`project_back`] runs: sharing its blocks with the pool (`threads`), and with the
/// AVX-512 form of the one-row kernels (`wide`, only where the CPU has AVX-512F).
#[derive(Clone, Copy)]
pub(crate) struct Run {
    threads: bool,
    wide: bool,
}

impl Run {
    /// With the pool when `threads`, and the widest kernels this CPU runs.
    pub(crate) fn new(threads: bool) -> Run {
        #[cfg(target_arch = "x86_64")]
        let wide = super::cpu_small_wide::available();
        #[cfg(not(target_arch = "x86_64"))]
        let wide = false;
        Run { threads, wide }
    }
}

/// `p[b][k] = u_k . y_b` and `acc[o] = Σ_k w[o][k] p[src[o]][k] u_k`.
///
/// # Errors
/// `OutOfMemory` when the partial outputs cannot be allocated (`p` and `acc` untouched).
///
/// # Panics
/// When the slices do not have the stated sizes, a source row is out of range, the batch
/// exceeds `MAX_ROWS` or `MAX_OUTS`, or [`available`] is false (the caller checks it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn project_back(
    e: &[f32],
    d: usize,
    y: &[f32],
    rows: usize,
    w: &[f32],
    src: &[usize],
    p: &mut [f32],
    acc: &mut [f32],
    run: Run,
) -> Result<()> {
    let r = e.len() / d;
    let outs = src.len();
    assert!(rows <= MAX_ROWS && outs <= MAX_OUTS && available());
    assert!(y.len() == rows * d && p.len() == rows * r && w.len() == outs * r);
    assert!(acc.len() == outs * d && src.iter().all(|&s| s < rows));
    let parts = parts(r);
    // Every block sums into its own partial output, added in block order afterwards. The
    // partials and a copy of `y` start at set distances from `e` modulo a page.
    let stride = (outs * d).next_multiple_of(PAGE / 4);
    let mut scratch = Scratch::take(rows * d + parts * stride + 2 * (PAGE / 4))?;
    let buf = scratch.get();
    let y_start = place(buf, 0, e, Y_OFFSET);
    let sums_start = place(buf, y_start + rows * d, e, SUMS_OFFSET);
    let (head, partials) = buf.split_at_mut(sums_start);
    let y_placed = &mut head[y_start..y_start + rows * d];
    y_placed.copy_from_slice(y);
    let y = &*y_placed;
    let mut pt = vec![0f32; r * rows];
    let block_len = r.div_ceil(parts);
    // One lock per block, each taken once: the blocks' slices go to whichever thread runs them.
    let jobs: Vec<Mutex<(&mut [f32], &mut [f32])>> = partials
        .chunks_mut(stride)
        .take(parts)
        .map(|c| &mut c[..outs * d])
        .zip(pt.chunks_mut(block_len * rows))
        .map(Mutex::new)
        .collect();
    let run_block = |b: usize| {
        let mut job = jobs[b].lock().unwrap_or_else(|e| e.into_inner());
        let (sums, pts) = &mut *job;
        // Zeroed by the thread that sums into it: its lines stay in that core's cache.
        sums.fill(0.0);
        // SAFETY: `available()` was asserted and `run.wide` is set only with AVX-512F; the
        // sizes of every slice were checked above (`pts` holds `rows` values per mode of the
        // block, `sums` `outs` rows of `d`).
        unsafe {
            block(
                e,
                d,
                y,
                rows,
                w,
                src,
                block_modes(r, b),
                pts,
                sums,
                run.wide,
            )
        };
    };
    if run.threads {
        crate::pool::share(parts, run_block);
    } else {
        (0..parts).for_each(run_block);
    }
    drop(jobs);
    for (k, vals) in pt.chunks(rows).enumerate() {
        for (b, &v) in vals.iter().enumerate() {
            p[b * r + k] = v;
        }
    }
    add_partials(acc, partials, stride, parts, run.threads);
    Ok(())
}

/// A page: the first-level cache is indexed by the address bits below it.
const PAGE: usize = 4096;

/// Where the partial outputs and the copy of `y` start, in bytes after the eigenvectors
/// modulo a page. When the dimension is a multiple of 1024, every eigenvector row starts at
/// the same place modulo a page: in a pass the eight rows of two groups fill the eight ways
/// of the same first-level cache sets, and rows of `y` or of the outputs placed there too
/// (as page-aligned allocations are) evicted them at every step (measured at 3072 x 768: a
/// third slower).
const Y_OFFSET: usize = 1024;
const SUMS_OFFSET: usize = 2048;

/// The first index from `from` of `buf` that lies `offset` bytes after `near` modulo a page
/// (at most `PAGE / 4 - 1` past `from`).
fn place(buf: &[f32], from: usize, near: &[f32], offset: usize) -> usize {
    let at = buf.as_ptr() as usize + from * 4;
    let want = (near.as_ptr() as usize + offset) % PAGE;
    from + (want + PAGE - at % PAGE) % PAGE / 4
}

/// Largest scratch (in floats, 4 MB) a thread keeps from call to call; a call that needs
/// more allocates its own.
const KEEP_SCRATCH: usize = 1 << 20;

thread_local! {
    /// The calling thread's scratch, kept between calls: without it every call allocated
    /// and zeroed the partial outputs (200 KB at d = 3072), and the allocator handed fresh
    /// pages back to the system and took them again (page faults at every call).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The thread's scratch for one call, given back when dropped.
struct Scratch(Vec<f32>);

impl Scratch {
    /// At least `len` floats (their values are left over from earlier calls).
    fn take(len: usize) -> Result<Scratch> {
        let mut buf = SCRATCH.take();
        if buf.len() < len {
            buf = try_vec(len, 0f32, "the partial outputs")?;
        }
        Ok(Scratch(buf))
    }

    fn get(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.len() <= KEEP_SCRATCH {
            SCRATCH.set(std::mem::take(&mut self.0));
        }
    }
}

/// `acc = partial_0 + partial_1 + ...`, element by element in block order; partial `b` starts
/// at `b * stride` of `partials` and has the length of `acc`. With `threads`, the pool's
/// threads take pieces of 1024 columns too.
fn add_partials(acc: &mut [f32], partials: &[f32], stride: usize, parts: usize, threads: bool) {
    const PIECE: usize = 1 << 10;
    debug_assert!(acc.len() <= stride && partials.len() >= (parts - 1) * stride + acc.len());
    let add = |c: usize, dst: &mut [f32]| {
        crate::simd::dispatch(|| sum_in_order(dst, partials, c * PIECE, stride, parts));
    };
    if threads && acc.len() > PIECE {
        let pieces: Vec<Mutex<&mut [f32]>> = acc.chunks_mut(PIECE).map(Mutex::new).collect();
        crate::pool::share(pieces.len(), |c| {
            add(c, &mut pieces[c].lock().unwrap_or_else(|e| e.into_inner()));
        });
    } else {
        acc.chunks_mut(PIECE)
            .enumerate()
            .for_each(|(c, dst)| add(c, dst));
    }
}

/// `dst[i] = partials[from + i] + partials[stride + from + i] + ...` over `parts` partials, in
/// that order; 64 columns at a time, their sums held in registers.
#[inline(always)]
fn sum_in_order(dst: &mut [f32], partials: &[f32], from: usize, stride: usize, parts: usize) {
    const COLS: usize = 64;
    let n = dst.len();
    let whole = n - n % COLS;
    for (i, out) in dst[..whole].chunks_exact_mut(COLS).enumerate() {
        let at = from + i * COLS;
        let mut sums = [0f32; COLS];
        sums.copy_from_slice(&partials[at..at + COLS]);
        for b in 1..parts {
            let part = &partials[b * stride + at..b * stride + at + COLS];
            for (s, &v) in sums.iter_mut().zip(part) {
                *s += v;
            }
        }
        out.copy_from_slice(&sums);
    }
    for (i, out) in dst.iter_mut().enumerate().skip(whole) {
        *out = partials[from + i];
        for b in 1..parts {
            *out += partials[b * stride + from + i];
        }
    }
}

/// Modes taken together by the kernels: four rows of eigenvectors stream at once (one row
/// at a time, a single thread read them at about half the rate of a BLAS matrix-vector
/// product), and the partial output is read and written once per four modes.
const GROUP: usize = 4;

/// One block of modes, `GROUP` at a time (single modes at the end): their projections
/// `pts[(k - k0) * rows + b]`, then `sums[o] += Σ_k w[o][k] pts[src[o]] u_k` while the rows
/// u_k are still in the cache. One row with one output goes to [`block_one`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    e: &[f32],
    d: usize,
    y: &[f32],
    rows: usize,
    w: &[f32],
    src: &[usize],
    modes: std::ops::Range<usize>,
    pts: &mut [f32],
    sums: &mut [f32],
    wide: bool,
) {
    if rows == 1 && src.len() == 1 {
        return block_one(e, d, y, w, modes, pts, sums, wide);
    }
    let r = e.len() / d;
    let (k0, end) = (modes.start, modes.end);
    let outs = src.len();
    let mut q = [0f32; MAX_OUTS * GROUP];
    let mut k = k0;
    while k < end {
        let m = if end - k >= GROUP { GROUP } else { 1 };
        let group = &e[k * d..(k + m) * d];
        let slot = &mut pts[(k - k0) * rows..(k - k0 + m) * rows];
        match (rows, m) {
            (1, GROUP) => dots_one::<GROUP>(group, y, slot),
            (2, GROUP) => dots::<2, GROUP>(group, y, slot),
            (3, GROUP) => dots::<3, GROUP>(group, y, slot),
            (_, GROUP) => dots::<4, GROUP>(group, y, slot),
            (1, _) => dots::<1, 1>(group, y, slot),
            (2, _) => dots::<2, 1>(group, y, slot),
            (3, _) => dots::<3, 1>(group, y, slot),
            _ => dots::<4, 1>(group, y, slot),
        }
        for (o, &s) in src.iter().enumerate() {
            for j in 0..m {
                q[o * m + j] = slot[j * rows + s] * w[o * r + k + j];
            }
        }
        if m == GROUP {
            axpys_by::<GROUP>(group, &q[..outs * m], sums);
        } else {
            axpys_by::<1>(group, &q[..outs * m], sums);
        }
        k += m;
    }
}

/// Largest dimension at which [`block_one`] computes the next group's projections in the
/// pass that adds the current group: below it, that group's rows (four of `d` floats), the
/// next group's, the row of `y` and the output (40 KB at d = 1024) stay in a 48 KB
/// first-level cache from one pass to the next. Past it the rows come back from the second
/// level and the overlap cost more than it saved (a scratch loop on one core, rows starting
/// on a cache line, AVX-512: 13-15 % faster at 512 x 512 and 1024 x 1024, 22 % slower at
/// 1536 x 768, 31 % slower at 12288 x 1024; AVX2: 15 % faster at 1024 x 1024, even at
/// 1536 x 768, 37 % slower at 12288 x 1024).
const PIPELINE_MAX_DIM: usize = 1024;

/// [`block`] for one row and one output, with the AVX-512 kernels when `wide`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_one(
    e: &[f32],
    d: usize,
    y: &[f32],
    w: &[f32],
    modes: std::ops::Range<usize>,
    pts: &mut [f32],
    sums: &mut [f32],
    wide: bool,
) {
    use super::cpu_small_wide as kernels;
    let pipelined = d <= PIPELINE_MAX_DIM;
    let (k0, end) = (modes.start, modes.end);
    let mut k = k0;
    // Whether the projections of the group at `k` were computed with the previous group.
    let mut ready = false;
    while k < end {
        let m = if end - k >= GROUP { GROUP } else { 1 };
        let group = &e[k * d..(k + m) * d];
        let slot = &mut pts[k - k0..k - k0 + m];
        match (ready, m, wide) {
            (true, _, _) => {}
            (_, GROUP, true) => kernels::dots::<GROUP>(group, y, slot),
            (_, GROUP, false) => dots_one::<GROUP>(group, y, slot),
            _ => dots::<1, 1>(group, y, slot),
        }
        let mut q = [0f32; GROUP];
        for (j, qj) in q[..m].iter_mut().enumerate() {
            *qj = slot[j] * w[k + j];
        }
        ready = m == GROUP && pipelined && end - k >= 2 * GROUP;
        if ready {
            let next = &e[(k + GROUP) * d..(k + 2 * GROUP) * d];
            let next_slot = &mut pts[k + GROUP - k0..k + 2 * GROUP - k0];
            if wide {
                kernels::axpys_dots::<GROUP>(group, &q, next, y, next_slot, sums);
            } else {
                axpys_dots::<GROUP>(group, &q, next, y, next_slot, sums);
            }
        } else if m == GROUP && wide {
            kernels::axpys::<GROUP>(group, &q, sums);
        } else if m == GROUP {
            axpys_by::<GROUP>(group, &q, sums);
        } else {
            axpys_by::<1>(group, &q[..1], sums);
        }
        k += m;
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    _: &[f32],
    _: usize,
    _: &[f32],
    _: usize,
    _: &[f32],
    _: &[usize],
    _: std::ops::Range<usize>,
    _: &mut [f32],
    _: &mut [f32],
    _: bool,
) {
    unreachable!("available() is false off x86_64")
}

/// `slot[j * R + b] = Σ_i group[j * d + i] y[b * d + i]` for the `M` rows j of `group` and
/// the `R` rows b of `y`: one 8-lane accumulator per pair, held in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dots<const R: usize, const M: usize>(group: &[f32], y: &[f32], slot: &mut [f32]) {
    use std::arch::x86_64::*;
    let d = group.len() / M;
    let mut acc = [[_mm256_setzero_ps(); M]; R];
    let vec_end = d - d % 8;
    let mut i = 0;
    while i < vec_end {
        let mut ev = [_mm256_setzero_ps(); M];
        for (j, v) in ev.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(group.as_ptr().add(j * d + i));
        }
        for (b, a) in acc.iter_mut().enumerate() {
            let yv = _mm256_loadu_ps(y.as_ptr().add(b * d + i));
            for (av, &evj) in a.iter_mut().zip(&ev) {
                *av = _mm256_fmadd_ps(evj, yv, *av);
            }
        }
        i += 8;
    }
    for (b, a) in acc.iter().enumerate() {
        for (j, &v) in a.iter().enumerate() {
            let (e_row, y_row) = (&group[j * d..(j + 1) * d], &y[b * d..(b + 1) * d]);
            slot[j * R + b] = finish_dot(v, e_row, y_row, vec_end);
        }
    }
}

/// A dot product from its eight lanes `v` (summed in lane order) and the elements `from..`
/// of `e_row` and `y_row` past them, one at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn finish_dot(
    v: std::arch::x86_64::__m256,
    e_row: &[f32],
    y_row: &[f32],
    from: usize,
) -> f32 {
    let mut lanes = [0f32; 8];
    std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), v);
    sum_lanes_and_tail(&lanes, e_row, y_row, from)
}

/// The lanes of a dot product's accumulator summed in lane order, then the elements `from..`
/// of `e_row` and `y_row` past them added one at a time (for both kernel widths).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn sum_lanes_and_tail(lanes: &[f32], e_row: &[f32], y_row: &[f32], from: usize) -> f32 {
    let mut total = lanes.iter().sum::<f32>();
    for (&e, &y) in e_row[from..].iter().zip(&y_row[from..]) {
        total += e * y;
    }
    total
}

/// [`dots`] for one row of `y`: two accumulators per mode, for enough independent chains of
/// fused multiply-adds to keep both FMA units busy (one chain per mode waited on its latency).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dots_one<const M: usize>(group: &[f32], y: &[f32], slot: &mut [f32]) {
    use std::arch::x86_64::*;
    let d = group.len() / M;
    let mut acc = [[_mm256_setzero_ps(); M]; 2];
    let pair_end = d - d % 16;
    let mut i = 0;
    while i < pair_end {
        for (h, a) in acc.iter_mut().enumerate() {
            let yv = _mm256_loadu_ps(y.as_ptr().add(i + 8 * h));
            for (j, av) in a.iter_mut().enumerate() {
                let ev = _mm256_loadu_ps(group.as_ptr().add(j * d + i + 8 * h));
                *av = _mm256_fmadd_ps(ev, yv, *av);
            }
        }
        i += 16;
    }
    if d - i >= 8 {
        let yv = _mm256_loadu_ps(y.as_ptr().add(i));
        for (j, av) in acc[0].iter_mut().enumerate() {
            let ev = _mm256_loadu_ps(group.as_ptr().add(j * d + i));
            *av = _mm256_fmadd_ps(ev, yv, *av);
        }
        i += 8;
    }
    for j in 0..M {
        let v = _mm256_add_ps(acc[0][j], acc[1][j]);
        slot[j] = finish_dot(v, &group[j * d..(j + 1) * d], y, i);
    }
}

/// `sums[o * d + i] += Σ_j q[o * M + j] group[j * d + i]` for every output row o, the `M`
/// rows j in order (one chain of fused multiply-adds per element). One or two output rows
/// hold their broadcast weights in registers ([`axpys_held`]); more load them at each step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn axpys_by<const M: usize>(group: &[f32], q: &[f32], sums: &mut [f32]) {
    use std::arch::x86_64::*;
    match q.len() / M {
        1 => axpys_held::<M, 1>(group, q, sums),
        2 => axpys_held::<M, 2>(group, q, sums),
        outs => axpys_with::<M>(group, q, sums, outs, |o, j| _mm256_set1_ps(q[o * M + j])),
    }
}

/// [`axpys_by`] for `O` output rows, their weights broadcast once into registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn axpys_held<const M: usize, const O: usize>(group: &[f32], q: &[f32], sums: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut qv = [[_mm256_setzero_ps(); M]; O];
    for (o, row) in qv.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = _mm256_set1_ps(q[o * M + j]);
        }
    }
    axpys_with::<M>(group, q, sums, O, |o, j| qv[o][j]);
}

/// The loop of [`axpys_by`] over `outs` output rows, `weight(o, j)` the broadcast weight of
/// output row o for group row j.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn axpys_with<const M: usize>(
    group: &[f32],
    q: &[f32],
    sums: &mut [f32],
    outs: usize,
    weight: impl Fn(usize, usize) -> std::arch::x86_64::__m256,
) {
    use std::arch::x86_64::*;
    let d = group.len() / M;
    let vec_end = d - d % 8;
    let base = sums.as_mut_ptr();
    let mut i = 0;
    while i < vec_end {
        let mut ev = [_mm256_setzero_ps(); M];
        for (j, v) in ev.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(group.as_ptr().add(j * d + i));
        }
        for o in 0..outs {
            let p = base.add(o * d + i);
            let mut acc = _mm256_loadu_ps(p);
            for (j, &evj) in ev.iter().enumerate() {
                acc = _mm256_fmadd_ps(weight(o, j), evj, acc);
            }
            _mm256_storeu_ps(p, acc);
        }
        i += 8;
    }
    axpys_tail::<M>(group, q, sums, vec_end);
}

/// `sums[i] += Σ_j q[j] group[j * d + i]` (one output row, as [`axpys_by`]) and, in the same
/// pass, `slot[j] = Σ_i next[j * d + i] y[i]` (the dot products of the next group, one row):
/// the loads of `next` from memory overlap the arithmetic on `group`, which the previous
/// pass brought into the cache.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn axpys_dots<const M: usize>(
    group: &[f32],
    q: &[f32],
    next: &[f32],
    y: &[f32],
    slot: &mut [f32],
    sums: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = group.len() / M;
    assert!(q.len() == M && next.len() == M * d && y.len() == d && slot.len() == M);
    assert!(sums.len() == d);
    let vec_end = d - d % 8;
    let (g, n, yp, out) = (group.as_ptr(), next.as_ptr(), y.as_ptr(), sums.as_mut_ptr());
    let mut qv = [_mm256_setzero_ps(); M];
    for (v, &qj) in qv.iter_mut().zip(q) {
        *v = _mm256_set1_ps(qj);
    }
    let mut dot = [_mm256_setzero_ps(); M];
    let mut i = 0;
    while i < vec_end {
        let yv = _mm256_loadu_ps(yp.add(i));
        for (j, a) in dot.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(n.add(j * d + i)), yv, *a);
        }
        let mut acc = _mm256_loadu_ps(out.add(i));
        for (j, &qj) in qv.iter().enumerate() {
            acc = _mm256_fmadd_ps(qj, _mm256_loadu_ps(g.add(j * d + i)), acc);
        }
        _mm256_storeu_ps(out.add(i), acc);
        i += 8;
    }
    axpys_tail::<M>(group, q, sums, vec_end);
    for (j, &v) in dot.iter().enumerate() {
        slot[j] = finish_dot(v, &next[j * d..(j + 1) * d], y, vec_end);
    }
}

/// The elements `from..d` of [`axpys_by`], one at a time.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn axpys_tail<const M: usize>(group: &[f32], q: &[f32], sums: &mut [f32], from: usize) {
    let d = group.len() / M;
    for t in from..d {
        for (o, qo) in q.chunks_exact(M).enumerate() {
            let dst = &mut sums[o * d + t];
            for (j, &qv) in qo.iter().enumerate() {
                *dst = qv.mul_add(group[j * d + t], *dst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of modes: every mode in exactly one block, in order, at most `MAX_PARTS`.
    #[test]
    fn blocks_cover_every_mode_once() {
        for r in [1, 2, 31, 32, 33, 100, 511, 512, 513, 1024, 3072, 12288] {
            let mut next = 0;
            for b in 0..parts(r) {
                let m = block_modes(r, b);
                assert_eq!(m.start, next, "r {r}");
                assert!(!m.is_empty(), "r {r} block {b}");
                next = m.end;
            }
            assert_eq!(next, r);
            assert!(parts(r) <= MAX_PARTS);
        }
    }

    /// The fused products against f64 sums at odd sizes (below, at and past the vector width
    /// and the block sizes; one mode), every batch size, one to two slabs, with and without
    /// threads; the result is the same bit for bit whatever the threads.
    #[test]
    fn fused_products_match_f64_sums() {
        if !available() {
            eprintln!("skipped: no AVX2/FMA on this CPU");
            return;
        }
        let mut rng = crate::rng::Rng::new(5);
        let sizes = [
            (37, 11),
            (1100, 70),
            (97, 200),
            (1, 1),
            (7, 3),
            (8, 1),
            (32, 1),
            (33, 65),
            (2049, 2),
            (40, 600),
        ];
        let f32s = |rng: &mut crate::rng::Rng, n| -> Vec<f32> {
            rng.normals(n).iter().map(|&v| v as f32).collect()
        };
        for (d, r) in sizes {
            let e = f32s(&mut rng, r * d);
            for rows in 1..=MAX_ROWS {
                for slabs in 1..=MAX_OUTS / rows {
                    let y = f32s(&mut rng, rows * d);
                    let outs = slabs * rows;
                    let w = f32s(&mut rng, outs * r);
                    let src: Vec<usize> = (0..outs).map(|o| o % rows).collect();
                    for wide in kernel_sets() {
                        let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
                        for threads in [false, true, true] {
                            let mut p = vec![f32::NAN; rows * r];
                            let mut acc = vec![f32::NAN; outs * d];
                            let run = Run { threads, wide };
                            crate::pool::install(|| {
                                project_back(&e, d, &y, rows, &w, &src, &mut p, &mut acc, run)
                            })
                            .unwrap();
                            check(&e, d, &y, &w, &src, &p, &acc);
                            let at =
                                format!("d {d} r {r} rows {rows} threads {threads} wide {wide}");
                            match &first {
                                None => first = Some((p, acc)),
                                Some((p0, acc0)) => {
                                    assert_eq!(bits(&p), bits(p0), "p {at}");
                                    assert_eq!(bits(&acc), bits(acc0), "acc {at}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The kernel sets this CPU runs: AVX2 always, AVX-512 where it has it.
    fn kernel_sets() -> Vec<bool> {
        let wide = super::super::cpu_small_wide::available();
        if !wide {
            eprintln!("this CPU has no AVX-512: only the AVX2 kernels are tested");
        }
        [false, true].into_iter().filter(|&w| !w || wide).collect()
    }

    /// The AVX-512 back-projection kernels give the bits of the AVX2 ones for the same
    /// weights (alone and with the next group's dot products, whose values are checked
    /// against f64 sums), at lengths around both vector widths.
    #[test]
    fn wide_back_projection_gives_the_bits_of_the_narrow_one() {
        use super::super::cpu_small_wide as wide;
        if !available() || !wide::available() {
            eprintln!("skipped: this CPU has no AVX-512 (the wide kernels are not used here)");
            return;
        }
        let mut rng = crate::rng::Rng::new(9);
        let mut f32s = |n: usize| -> Vec<f32> {
            rng.normals(n)
                .iter()
                .map(|&v| (v * 10f64.powf(v)) as f32)
                .collect()
        };
        for d in [1, 7, 8, 15, 16, 17, 31, 33, 100, 1027] {
            let (group, next, y) = (f32s(GROUP * d), f32s(GROUP * d), f32s(d));
            let (q, start) = (f32s(GROUP), f32s(d));
            let (mut narrow, mut wide_sums) = (start.clone(), start.clone());
            // SAFETY: AVX2/FMA and AVX-512F were checked; every slice has its stated size.
            unsafe {
                axpys_by::<GROUP>(&group, &q, &mut narrow);
                wide::axpys::<GROUP>(&group, &q, &mut wide_sums);
            }
            assert_eq!(bits(&wide_sums), bits(&narrow), "axpys d {d}");
            let (mut narrow, mut wide_sums) = (start.clone(), start);
            let (mut slot_n, mut slot_w) = ([0f32; GROUP], [0f32; GROUP]);
            // SAFETY: as above.
            unsafe {
                axpys_dots::<GROUP>(&group, &q, &next, &y, &mut slot_n, &mut narrow);
                wide::axpys_dots::<GROUP>(&group, &q, &next, &y, &mut slot_w, &mut wide_sums);
            }
            assert_eq!(bits(&wide_sums), bits(&narrow), "axpys_dots d {d}");
            let unit = f64::from(f32::EPSILON);
            for (j, (&n, &w)) in slot_n.iter().zip(&slot_w).enumerate() {
                let terms = (0..d).map(|i| f64::from(next[j * d + i]) * f64::from(y[i]));
                let (want, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                for got in [n, w] {
                    let err = (f64::from(got) - want).abs();
                    assert!(err <= 2.0 * unit * d as f64 * size, "dot {j} d {d}");
                }
            }
        }
    }

    /// `p` and `acc` within a few roundings per term of the f64 sums.
    fn check(e: &[f32], d: usize, y: &[f32], w: &[f32], src: &[usize], p: &[f32], acc: &[f32]) {
        let r = e.len() / d;
        let rows = y.len() / d;
        let unit = f64::from(f32::EPSILON);
        for b in 0..rows {
            for k in 0..r {
                let terms = (0..d).map(|i| f64::from(y[b * d + i]) * f64::from(e[k * d + i]));
                let (want, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                let got = f64::from(p[b * r + k]);
                assert!(
                    (got - want).abs() <= 2.0 * unit * d as f64 * size,
                    "p {b} {k}"
                );
            }
        }
        for (o, &s) in src.iter().enumerate() {
            for i in 0..d {
                let terms = (0..r).map(|k| {
                    let q = f64::from(p[s * r + k] * w[o * r + k]);
                    q * f64::from(e[k * d + i])
                });
                let (want, size) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                let got = f64::from(acc[o * d + i]);
                let tol = 2.0 * unit * (r + MAX_PARTS) as f64 * size;
                assert!((got - want).abs() <= tol, "acc {o} {i}: {got} vs {want}");
            }
        }
    }
}
