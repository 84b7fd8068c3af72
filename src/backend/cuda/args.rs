//! The kernels' argument block, byte for byte `GsArgs` in kernels/common.cuh, and how one call
//! fills it.

use crate::noise::{Levels, Noise, Op};

use super::geometry::{Geometry, BN};

/// Target levels passed inside the kernel arguments; more go through a device table.
pub const INLINE_LEVELS: usize = 16;

/// One noise level as the kernels read it (`GsLevel` in kernels/common.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct GsLevel {
    pub alpha: f64,
    pub sigma: f64,
}

impl From<Noise> for GsLevel {
    fn from(n: Noise) -> Self {
        GsLevel {
            alpha: n.alpha,
            sigma: n.sigma,
        }
    }
}

/// Operation numbers of kernels/common.cuh (`GS_OP_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpKind {
    Skip = 0,
    Denoise = 1,
    SkipTraj = 2,
    X0Traj = 3,
}

/// One component of a model on the device (`GsComponent` in kernels/common.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GsComponent {
    pub mean: u64,
    pub eigvecs: u64,
    pub eigvals: u64,
    pub rank: i64,
}
const _: () = assert!(std::mem::size_of::<GsComponent>() == 32);

/// The rows of one component in a call (`GsGroup` in kernels/common.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GsGroup {
    pub first: i64,
    pub count: i64,
    pub tile1: i64,
    pub tile2: i64,
    pub component: i64,
    pub residual_var: f64,
}
const _: () = assert!(std::mem::size_of::<GsGroup>() == 48);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct GsArgs {
    pub x: u64,
    pub out: u64,
    pub components: u64,
    pub groups: u64,
    pub order: u64,
    pub tile_group1: u64,
    pub tile_group2: u64,
    pub part: u64,
    pub q: u64,
    pub qexp: u64,
    pub counters: u64,
    pub from_table: u64,
    pub to_table: u64,
    pub batch: i64,
    pub dim: i64,
    pub rank: i64,
    pub rq: i64,
    pub rpad: i64,
    pub rowpad: i64,
    pub cpad: i64,
    pub rowpad2: i64,
    pub row_tiles1: i64,
    pub row_tiles2: i64,
    pub kind: i32,
    pub slabs: i32,
    pub splits: i32,
    pub to_per_row: i32,
    pub splits2: i32,
    pub mode_tiles: i32,
    pub component: i64,
    pub residual_var: f64,
    pub from: GsLevel,
    pub to: [GsLevel; INLINE_LEVELS],
    /// Version 2: 1 when the call's eigenvectors fit in L2 (launch 1 keeps them there).
    pub keep_eigvecs: i64,
}
const _: () = assert!(std::mem::size_of::<GsArgs>() == 504);

/// An operation's levels as the kernels take them: uniform ones inline, per-row ones and
/// trajectories longer than [`INLINE_LEVELS`] in a table `[from rows][to rows or slabs]`.
pub(crate) struct LevelPlan {
    pub kind: OpKind,
    pub from: GsLevel,
    pub inline_to: [GsLevel; INLINE_LEVELS],
    pub table: Vec<GsLevel>,
    pub from_rows: usize,
    pub to_in_table: bool,
    pub to_per_row: bool,
}

impl LevelPlan {
    pub fn new(op: &Op<'_>) -> LevelPlan {
        let (kind, from, to): (OpKind, Levels<'_>, Vec<Levels<'_>>) = match *op {
            Op::Skip { from, to } => (OpKind::Skip, from, vec![to]),
            Op::Denoise { at } => (OpKind::Denoise, Levels::One(Noise::new(0.0, 1.0)), vec![at]),
            Op::SkipTrajectory { from, levels } => (
                OpKind::SkipTraj,
                from,
                levels.iter().map(|&n| Levels::One(n)).collect(),
            ),
            Op::X0Trajectory { from, levels } => (
                OpKind::X0Traj,
                from,
                levels.iter().map(|&n| Levels::One(n)).collect(),
            ),
        };
        let to_per_row = matches!(to.first(), Some(Levels::PerRow(_)));
        let to_in_table = to_per_row || to.len() > INLINE_LEVELS;
        let mut table = Vec::new();
        let mut from_rows = 0;
        let mut from_inline = GsLevel::default();
        match from {
            Levels::PerRow(v) => {
                table.extend(v.iter().map(|&n| GsLevel::from(n)));
                from_rows = v.len();
            }
            Levels::One(n) => from_inline = n.into(),
        }
        let mut inline_to = [GsLevel::default(); INLINE_LEVELS];
        for (i, l) in to.iter().enumerate() {
            match l {
                Levels::PerRow(v) => table.extend(v.iter().map(|&n| GsLevel::from(n))),
                Levels::One(n) if to_in_table => table.push((*n).into()),
                Levels::One(n) => inline_to[i] = (*n).into(),
            }
        }
        LevelPlan {
            kind,
            from: from_inline,
            inline_to,
            table,
            from_rows,
            to_in_table,
            to_per_row,
        }
    }
}

/// Device addresses of one call.
pub(crate) struct Pointers {
    pub x: u64,
    pub out: u64,
    /// The model's component table.
    pub components: u64,
    pub scratch: u64,
}

/// The component of every row of a call, with the residual variance the launcher chose.
pub(crate) struct Uniform {
    pub component: usize,
    pub residual_var: f64,
}

/// Device addresses of a grouped call's tables (see [`GroupTables`]).
pub(crate) struct GroupPointers {
    pub groups: u64,
    pub order: u64,
    pub tile_group1: u64,
    pub tile_group2: u64,
}

/// The tables of a call whose rows use several components (kernels/common.cuh): the call's
/// component table, rows ordered by component (stable), one group per component used with
/// its first row tile in each launch, and the group of every row tile.
#[derive(Debug)]
pub(crate) struct GroupTables {
    pub components: Vec<GsComponent>,
    pub groups: Vec<GsGroup>,
    pub order: Vec<i64>,
    pub tile_group1: Vec<i32>,
    pub tile_group2: Vec<i32>,
}

/// Byte offsets of [`GroupTables`] laid out one after the other (8-byte aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GroupOffsets {
    pub components: usize,
    pub groups: usize,
    pub order: usize,
    pub tile_group1: usize,
    pub tile_group2: usize,
    pub total: usize,
}

impl GroupTables {
    /// `groups[c]` holds the rows of component `c` in row order (`crate::rows::groups`);
    /// `c` indexes `entries` and `residual` (the residual variance the launcher chose for that
    /// component); `bm1`/`bm2` are the launches' tile heights.
    pub fn new(
        groups: &[Vec<usize>],
        entries: Vec<GsComponent>,
        residual: &[f64],
        bm1: usize,
        bm2: usize,
        slabs: usize,
    ) -> GroupTables {
        // Components in index order, rows in row order within each: a stable sort by component.
        let order: Vec<i64> = groups.iter().flatten().map(|&r| r as i64).collect();
        let (mut table, mut tile_group1, mut tile_group2) = (Vec::new(), Vec::new(), Vec::new());
        let (mut first, mut tile1, mut tile2) = (0usize, 0usize, 0usize);
        for (c, rows) in groups.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let count = rows.len();
            let g = table.len() as i32;
            let (t1, t2) = (count.div_ceil(bm1), (slabs * count).div_ceil(bm2));
            table.push(GsGroup {
                first: first as i64,
                count: count as i64,
                tile1: tile1 as i64,
                tile2: tile2 as i64,
                component: c as i64,
                residual_var: residual[c],
            });
            tile_group1.extend(std::iter::repeat_n(g, t1));
            tile_group2.extend(std::iter::repeat_n(g, t2));
            tile1 += t1;
            tile2 += t2;
            first += count;
        }
        GroupTables {
            components: entries,
            groups: table,
            order,
            tile_group1,
            tile_group2,
        }
    }

    /// Where each table goes, from byte 0.
    pub fn offsets(&self) -> GroupOffsets {
        let next = |at: usize, bytes: usize| (at + bytes).next_multiple_of(8);
        let components = 0;
        let groups = next(components, 32 * self.components.len());
        let order = next(groups, 48 * self.groups.len());
        let tile_group1 = next(order, 8 * self.order.len());
        let tile_group2 = next(tile_group1, 4 * self.tile_group1.len());
        let total = next(tile_group2, 4 * self.tile_group2.len());
        GroupOffsets {
            components,
            groups,
            order,
            tile_group1,
            tile_group2,
            total,
        }
    }

    /// The tables as the device reads them (little-endian, at [`GroupTables::offsets`]).
    pub fn bytes(&self) -> Vec<u8> {
        let o = self.offsets();
        let mut b = vec![0u8; o.total];
        let mut put = |at: &mut usize, v: &[u8]| {
            b[*at..*at + v.len()].copy_from_slice(v);
            *at += v.len();
        };
        let mut at = o.components;
        for c in &self.components {
            for v in [c.mean, c.eigvecs, c.eigvals, c.rank as u64] {
                put(&mut at, &v.to_le_bytes());
            }
        }
        at = o.groups;
        for g in &self.groups {
            for v in [g.first, g.count, g.tile1, g.tile2, g.component] {
                put(&mut at, &v.to_le_bytes());
            }
            put(&mut at, &g.residual_var.to_le_bytes());
        }
        at = o.order;
        for r in &self.order {
            put(&mut at, &r.to_le_bytes());
        }
        at = o.tile_group1;
        for t in self.tile_group1.iter().chain(&self.tile_group2) {
            put(&mut at, &t.to_le_bytes());
        }
        b
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    p: &Pointers,
    g: &Geometry,
    levels: &LevelPlan,
    rows: &Uniform,
    grouped: Option<&GroupPointers>,
    batch: usize,
    dim: usize,
    rank: usize,
    slabs: usize,
    keep_eigvecs: bool,
) -> GsArgs {
    let l = &g.layout;
    let at = |off: usize| p.scratch + off as u64;
    let table = at(l.table);
    let level_bytes = std::mem::size_of::<GsLevel>() as u64;
    let gp = grouped.unwrap_or(&GroupPointers {
        groups: 0,
        order: 0,
        tile_group1: 0,
        tile_group2: 0,
    });
    GsArgs {
        x: p.x,
        out: p.out,
        components: p.components,
        groups: gp.groups,
        order: gp.order,
        tile_group1: gp.tile_group1,
        tile_group2: gp.tile_group2,
        part: at(l.part),
        q: at(l.q),
        qexp: at(l.qexp),
        counters: at(l.counters),
        from_table: if levels.from_rows > 0 { table } else { 0 },
        to_table: if levels.to_in_table {
            table + levels.from_rows as u64 * level_bytes
        } else {
            0
        },
        batch: batch as i64,
        dim: dim as i64,
        rank: rank as i64,
        rq: g.rq as i64,
        rpad: (g.project.col_tiles * BN) as i64,
        rowpad: (g.project.row_tiles * g.project.bm) as i64,
        cpad: (g.backproject.col_tiles * BN) as i64,
        rowpad2: (g.backproject.row_tiles * g.backproject.bm) as i64,
        row_tiles1: g.project.row_tiles as i64,
        row_tiles2: g.backproject.row_tiles as i64,
        kind: levels.kind as i32,
        slabs: slabs as i32,
        splits: g.project.splits as i32,
        to_per_row: levels.to_per_row as i32,
        splits2: g.backproject.splits as i32,
        mode_tiles: g.project.col_tiles as i32,
        component: rows.component as i64,
        residual_var: rows.residual_var,
        from: levels.from,
        to: levels.inline_to,
        keep_eigvecs: keep_eigvecs as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_order_rows_by_component_and_start_new_tiles() {
        let rows = [2u32, 0, 2, 2, 0, 1];
        let entries = vec![GsComponent::default(); 3];
        let groups = crate::rows::groups(&rows, 3);
        let t = GroupTables::new(&groups, entries, &[0.5, 0.25, 0.125], 2, 4, 3);
        assert_eq!(t.order, [1, 4, 5, 0, 2, 3]);
        let g: Vec<(i64, i64, i64, i64, i64)> = t
            .groups
            .iter()
            .map(|g| (g.first, g.count, g.tile1, g.tile2, g.component))
            .collect();
        // counts 2, 1, 3; launch 1 tiles of 2 rows: 1, 1, 2; launch 2 (3 slabs) of 4: 2, 1, 3.
        assert_eq!(g, [(0, 2, 0, 0, 0), (2, 1, 1, 2, 1), (3, 3, 2, 3, 2)]);
        assert_eq!(t.groups[2].residual_var, 0.125);
        assert_eq!(t.tile_group1, [0, 1, 2, 2]);
        assert_eq!(t.tile_group2, [0, 0, 1, 2, 2, 2]);
        let o = t.offsets();
        assert_eq!(
            (o.groups, o.order, o.tile_group1, o.tile_group2),
            (96, 240, 288, 304)
        );
        let b = t.bytes();
        assert_eq!(b.len(), o.total);
        assert_eq!(&b[o.order..o.order + 8], &1i64.to_le_bytes());
        assert_eq!(
            &b[o.tile_group2 + 8..o.tile_group2 + 12],
            &1i32.to_le_bytes()
        );
        assert_eq!(
            &b[o.groups + 48 + 40..o.groups + 96],
            &0.25f64.to_le_bytes()
        );
    }

    #[test]
    fn uniform_levels_ride_inline_and_per_row_ones_go_to_the_table() {
        let rows = [Noise::edm(3.0), Noise::edm(4.0)];
        let p = LevelPlan::new(&Op::Skip {
            from: Noise::edm(80.0).into(),
            to: Noise::edm(10.0).into(),
        });
        assert!(p.table.is_empty() && !p.to_in_table);
        assert_eq!(
            p.from,
            GsLevel {
                alpha: 1.0,
                sigma: 80.0
            }
        );
        assert_eq!(
            p.inline_to[0],
            GsLevel {
                alpha: 1.0,
                sigma: 10.0
            }
        );
        let p = LevelPlan::new(&Op::Skip {
            from: Levels::PerRow(&rows),
            to: Levels::PerRow(&rows),
        });
        assert_eq!((p.from_rows, p.table.len(), p.to_per_row), (2, 4, true));
        let long: Vec<Noise> = (0..17).map(|i| Noise::edm(i as f64)).collect();
        let p = LevelPlan::new(&Op::X0Trajectory {
            from: Noise::edm(80.0).into(),
            levels: &long,
        });
        assert_eq!(
            (p.kind, p.table.len(), p.to_in_table, p.to_per_row),
            (OpKind::X0Traj, 17, true, false)
        );
    }
}
