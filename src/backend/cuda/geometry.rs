//! Launch shapes and the per-call scratch layout (pure arithmetic, tested without a GPU).
//!
//! Launch 1 (projection) has a BM1 x 64 tile of P per block; launch 2 (back-projection) a
//! BM2 x 64 tile of the output. Both grids are flat over tiles (`blocks`, row tile fastest) with
//! the split-K index on grid z, so only the split count meets a 65535 limit. See
//! kernels/skip.cu for what each buffer holds.

pub use crate::backend::Splits;
use crate::context::EigvecStorage;
use crate::error::{Error, Result};

/// Columns (launch 2) or modes (launch 1) per block.
pub(crate) const BN: usize = 64;
/// The driver's limits on grid x and grid z.
const MAX_GRID_X: usize = i32::MAX as usize;
const MAX_GRID_Z: usize = 65535;
/// Scratch regions start on this boundary (the driver's allocation alignment).
const ALIGN: usize = 256;

/// One launch: its tile height, grid and split count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    /// Rows per block (BM).
    pub bm: usize,
    /// Tiles along the rows.
    pub row_tiles: usize,
    /// Tiles along the other dimension (modes for launch 1, columns for launch 2).
    pub col_tiles: usize,
    /// Split-K count (grid z).
    pub splits: usize,
}

impl Launch {
    /// Blocks per split: grid x.
    pub fn blocks(&self) -> usize {
        self.row_tiles * self.col_tiles
    }
}

/// Shapes and scratch of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub project: Launch,
    pub backproject: Launch,
    /// Leading dimension of q (rank rounded up to 8 for 16-byte rows).
    pub rq: usize,
    /// Byte offsets in the call's scratch allocation, and its size.
    pub layout: Layout,
}

/// Where each scratch buffer lives in the call's one allocation (byte offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub part: usize,
    pub q: usize,
    pub qexp: usize,
    pub counters: usize,
    /// Number of u32 tile counters (0 when no launch splits).
    pub counter_count: usize,
    pub table: usize,
    pub total: usize,
}

fn too_big() -> Error {
    Error::arg(
        "batch",
        "the scratch this call needs overflows the address space",
    )
}

fn mul(a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(too_big)
}

fn aligned(offset: usize) -> Result<usize> {
    offset.checked_next_multiple_of(ALIGN).ok_or_else(too_big)
}

/// The version-1 split rule: the fewest splits that give about four blocks per
/// multiprocessor over `tiles` tiles, each split a whole number of the `chunks` reduction
/// chunks (kernels/NOTES.md: four 8 KB loads in flight per multiprocessor).
pub(crate) fn split_rule(tiles: usize, chunks: usize, sms: usize) -> usize {
    let want = (4 * sms).div_ceil(tiles.max(1)).clamp(1, chunks.max(1));
    chunks.div_ceil(chunks.div_ceil(want)).max(1)
}

/// The version-2 split rule: with `slots` blocks resident on the whole device at once
/// (multiprocessors x blocks per multiprocessor, from the occupancy API), the split count whose
/// grid best fills its last wave (blocks / (waves x slots)), a hundredth of a wave's worth
/// deducted per extra wave so that fewer splits win ties; never an empty split (a split is a
/// whole number of the `chunks` reduction chunks). A launch that fills the device with its
/// tiles alone does not split.
pub(crate) fn wave_rule(tiles: usize, chunks: usize, slots: usize) -> usize {
    let (tiles, slots) = (tiles.max(1), slots.max(1));
    if tiles >= slots || chunks <= 1 {
        return 1;
    }
    let mut best = (f64::MIN, 1);
    for s in 1..=chunks.min(4 * slots.div_ceil(tiles)) {
        let splits = chunks.div_ceil(chunks.div_ceil(s));
        let blocks = tiles * splits;
        let waves = blocks.div_ceil(slots);
        let score = blocks as f64 / (waves * slots) as f64 - 0.01 * (waves - 1) as f64;
        if score > best.0 + 1e-9 {
            best = (score, splits);
        }
    }
    best.1
}

/// How the launcher picks the split counts the caller left open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SplitRule {
    /// Version 1 ([`split_rule`]) on this many multiprocessors.
    PerSm(usize),
    /// Version 2 ([`wave_rule`]): blocks resident on the device of launch 1 and launch 2, at
    /// their shorter (index 0) and taller tile height.
    Waves {
        project: [usize; 2],
        backproject: [usize; 2],
    },
}

impl SplitRule {
    /// Splits of a launch over `tiles` tiles and `chunks` chunks; `tall` picks the taller tile.
    fn splits(self, project: bool, tall: bool, tiles: usize, chunks: usize) -> usize {
        match self {
            SplitRule::PerSm(sms) => split_rule(tiles, chunks, sms),
            SplitRule::Waves {
                project: p,
                backproject: b,
            } => wave_rule(tiles, chunks, if project { p } else { b }[tall as usize]),
        }
    }
}

impl Geometry {
    /// Shapes for `batch` rows of a `dim`-dim, `rank`-mode model, `slabs` output slabs, split
    /// counts by `rule` where `splits` leaves them open, and `table_bytes` of uploaded levels.
    ///
    /// # Errors
    /// `InvalidArgument` when a grid or the scratch would exceed what one launch can address.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dim: usize,
        rank: usize,
        batch: usize,
        slabs: usize,
        storage: EigvecStorage,
        rule: SplitRule,
        splits: Splits,
        table_bytes: usize,
    ) -> Result<Geometry> {
        Self::grouped(
            dim,
            rank,
            &[batch],
            slabs,
            storage,
            rule,
            splits,
            table_bytes,
        )
    }

    /// [`Geometry::new`] for rows in groups of `counts` rows (one group per component used;
    /// each group starts a new row tile in both launches); `rank` is the largest rank.
    ///
    /// # Errors
    /// As [`Geometry::new`].
    #[allow(clippy::too_many_arguments)]
    pub fn grouped(
        dim: usize,
        rank: usize,
        counts: &[usize],
        slabs: usize,
        storage: EigvecStorage,
        rule: SplitRule,
        splits: Splits,
        table_bytes: usize,
    ) -> Result<Geometry> {
        let (ub, bk) = match storage {
            EigvecStorage::F16 => (2, 64),
            EigvecStorage::F32 => (4, 32),
        };
        let batch = counts
            .iter()
            .try_fold(0usize, |a, &c| a.checked_add(c))
            .ok_or_else(too_big)?;
        let most = counts.iter().copied().max().unwrap_or(0);
        let rows2 = mul(slabs, batch)?;
        let bm1 = if most >= 64 { 64 } else { 32 };
        let bm2 = if mul(slabs, most)? >= 128 { 128 } else { 32 };
        let row_tiles1: usize = counts.iter().map(|c| c.div_ceil(bm1)).sum();
        let row_tiles2: usize = counts.iter().map(|&c| (slabs * c).div_ceil(bm2)).sum();
        let mode_tiles = rank.div_ceil(BN);
        let col_tiles = dim.div_ceil(BN);
        let blocks1 = mul(row_tiles1, mode_tiles)?;
        let blocks2 = mul(row_tiles2, col_tiles)?;
        let pick = |forced: Option<usize>, auto: usize| -> Result<usize> {
            match forced {
                Some(0) => Err(Error::arg("splits", "a split count is at least 1")),
                Some(s) if s > MAX_GRID_Z => Err(Error::arg(
                    "splits",
                    format!("{s} splits exceed the grid limit of {MAX_GRID_Z}"),
                )),
                Some(s) => Ok(s),
                None => Ok(auto.min(MAX_GRID_Z)),
            }
        };
        let splits1 = pick(
            splits.project,
            rule.splits(true, bm1 == 64, blocks1, dim.div_ceil(bk)),
        )?;
        let splits2 = pick(
            splits.backproject,
            rule.splits(false, bm2 == 128, blocks2, rank.div_ceil(bk)),
        )?;
        if blocks1 > MAX_GRID_X || blocks2 > MAX_GRID_X {
            return Err(Error::arg(
                "batch",
                format!(
                    "{} tiles exceed the {MAX_GRID_X} blocks of one launch: split the batch",
                    blocks1.max(blocks2)
                ),
            ));
        }
        let rq = rank.div_ceil(8) * 8;
        let partial = |splits: usize, rows: usize, cols: usize| -> Result<usize> {
            if splits < 2 {
                return Ok(0);
            }
            mul(mul(mul(splits, rows)?, cols)?, 4)
        };
        let part_bytes = partial(splits1, row_tiles1 * bm1, mode_tiles * BN)?.max(partial(
            splits2,
            row_tiles2 * bm2,
            col_tiles * BN,
        )?);
        let q_bytes = mul(rows2, mul(rq, ub)?)?;
        let qexp_bytes = mul(mul(rows2, mode_tiles)?, 4)?;
        let counter_count = if splits1 > 1 || splits2 > 1 {
            blocks1.max(blocks2)
        } else {
            0
        };
        let part = 0;
        let q = aligned(part + part_bytes)?;
        let qexp = aligned(q.checked_add(q_bytes).ok_or_else(too_big)?)?;
        let counters = aligned(qexp.checked_add(qexp_bytes).ok_or_else(too_big)?)?;
        let table = aligned(counters + counter_count * 4)?;
        let total = aligned(table.checked_add(table_bytes).ok_or_else(too_big)?)?;
        Ok(Geometry {
            project: Launch {
                bm: bm1,
                row_tiles: row_tiles1,
                col_tiles: mode_tiles,
                splits: splits1,
            },
            backproject: Launch {
                bm: bm2,
                row_tiles: row_tiles2,
                col_tiles,
                splits: splits2,
            },
            rq,
            layout: Layout {
                part,
                q,
                qexp,
                counters,
                counter_count,
                table,
                total,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(dim: usize, rank: usize, batch: usize, slabs: usize) -> Geometry {
        Geometry::new(
            dim,
            rank,
            batch,
            slabs,
            EigvecStorage::F16,
            SplitRule::PerSm(132),
            Splits::default(),
            0,
        )
        .unwrap()
    }

    #[test]
    fn split_rule_fills_four_blocks_per_multiprocessor_in_whole_chunks() {
        // batch 1, d = 12288 full rank: 192 tiles, 192 chunks; 528 blocks wanted -> 3 splits
        assert_eq!(split_rule(192, 192, 132), 3);
        // more tiles than 4 per SM: no split
        assert_eq!(split_rule(1000, 192, 132), 1);
        // never more splits than chunks
        assert_eq!(split_rule(1, 5, 132), 5);
        // uneven chunks: 10 chunks, want 4 -> 3 per split -> 4 splits (the last one short)
        assert_eq!(split_rule(33, 10, 32), 4);
    }

    #[test]
    fn wave_rule_fills_whole_waves_of_resident_blocks() {
        // 132 SMs x 3 resident blocks = 396 slots. d = 12288 full rank, batch 1: 192 tiles,
        // 192 chunks: 2 splits give 384 blocks, one wave 97 % full (3 would need 1.45 waves)
        assert_eq!(wave_rule(192, 192, 396), 2);
        // d = 3072: 48 tiles, 48 chunks: 8 splits = 384 blocks in one wave
        assert_eq!(wave_rule(48, 48, 396), 8);
        // 100 tiles, 10 chunks on 150 slots: 1 split fills 67 %, 3 splits 300 blocks = 2 full
        // waves, more splits than chunks cannot help
        assert_eq!(wave_rule(100, 10, 150), 3);
        // tiles alone fill the device; a single chunk cannot split
        assert_eq!(wave_rule(400, 192, 396), 1);
        assert_eq!(wave_rule(10, 1, 396), 1);
        // never an empty split: 10 chunks asked for 4 splits get 4 of 3 chunks (last short)
        for (tiles, chunks, slots) in [(1, 10, 7), (3, 10, 20), (7, 33, 100), (5, 1000, 9)] {
            let s = wave_rule(tiles, chunks, slots);
            let per = chunks.div_ceil(s);
            assert!(
                s >= 1 && s <= chunks && (s - 1) * per < chunks,
                "{tiles} {chunks} {slots}: {s}"
            );
        }
    }

    #[test]
    fn each_version_uses_its_own_rule_and_tile_heights_pick_the_slots() {
        let waves = SplitRule::Waves {
            project: [396, 264],
            backproject: [396, 132],
        };
        let g = |rule, batch| {
            Geometry::new(
                12288,
                12288,
                batch,
                1,
                EigvecStorage::F16,
                rule,
                Splits::default(),
                0,
            )
            .unwrap()
        };
        let v2 = g(waves, 1);
        assert_eq!((v2.project.splits, v2.backproject.splits), (2, 2));
        let v1 = g(SplitRule::PerSm(132), 1);
        assert_eq!((v1.project.splits, v1.backproject.splits), (3, 3));
        // batch 64: launch 1 uses BM 64 (264 slots), launch 2 BM 32 (396): 192 tiles in launch 1,
        // 2 x 192 = 384 blocks over 264 slots is 1.45 waves; 4 splits fill 3 waves (97 %)
        let v2 = g(waves, 64);
        assert_eq!(v2.project.bm, 64);
        assert_eq!(v2.project.splits, wave_rule(192, 192, 264));
        assert_eq!(v2.project.splits, 4);
        assert_eq!(v2.backproject.splits, wave_rule(2 * 192, 192, 396));
    }

    #[test]
    fn tile_heights_and_grids_follow_the_batch() {
        let g = geo(3073, 257, 17, 1);
        assert_eq!(
            (g.project.bm, g.project.row_tiles, g.project.col_tiles),
            (32, 1, 5)
        );
        assert_eq!(
            (
                g.backproject.bm,
                g.backproject.row_tiles,
                g.backproject.col_tiles
            ),
            (32, 1, 49)
        );
        let g = geo(100, 100, 64, 2);
        assert_eq!(
            (g.project.bm, g.backproject.bm, g.backproject.row_tiles),
            (64, 128, 1)
        );
        assert_eq!(g.rq, 104);
    }

    #[test]
    fn scratch_regions_are_aligned_and_disjoint() {
        let g = Geometry::new(
            1000,
            333,
            5,
            3,
            EigvecStorage::F16,
            SplitRule::PerSm(132),
            Splits::default(),
            40,
        )
        .unwrap();
        let l = g.layout;
        for off in [l.part, l.q, l.qexp, l.counters, l.table, l.total] {
            assert_eq!(off % ALIGN, 0);
        }
        assert!(l.q >= l.part + 4 * g.project.splits * 32 * 384);
        assert!(l.qexp >= l.q + 15 * 336 * 2);
        assert!(l.counters >= l.qexp + 15 * 6 * 4);
        assert!(l.table >= l.counters + 4 * l.counter_count);
        assert!(l.total >= l.table + 40);
        assert!(l.counter_count > 0, "this shape splits");
    }

    #[test]
    fn wide_models_use_the_flat_grid_instead_of_failing() {
        // d = 5M columns: 78,125 column tiles, beyond the 65535 limit of grid y
        let g = geo(5_000_000, 8, 1, 1);
        assert_eq!(g.backproject.blocks(), 78_125);
        assert_eq!(g.backproject.splits, 1);
    }

    #[test]
    fn forced_splits_are_checked_and_used() {
        let forced = Splits {
            project: Some(7),
            backproject: Some(2),
        };
        let rule = SplitRule::PerSm(132);
        let g = Geometry::new(3072, 3072, 1, 1, EigvecStorage::F16, rule, forced, 0).unwrap();
        assert_eq!((g.project.splits, g.backproject.splits), (7, 2));
        for bad in [Some(0), Some(65536)] {
            let s = Splits {
                project: bad,
                backproject: None,
            };
            let rule = SplitRule::PerSm(4);
            assert!(Geometry::new(64, 8, 1, 1, EigvecStorage::F32, rule, s, 0).is_err());
        }
    }

    #[test]
    fn sizes_whose_products_overflow_are_refused() {
        let e = Geometry::new(
            1 << 40,
            1 << 20,
            usize::MAX / 2,
            3,
            EigvecStorage::F16,
            SplitRule::PerSm(132),
            Splits::default(),
            0,
        );
        assert!(matches!(e, Err(Error::InvalidArgument { .. })), "{e:?}");
    }
}
