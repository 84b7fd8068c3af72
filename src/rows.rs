//! Calls whose rows use different components of a model: the component of every row is
//! checked, rows are grouped by component, and each group runs as one call of its own (one
//! GEMM pair per group on the CPU).

use crate::error::{Error, Result};
use crate::model::Model;
use crate::noise::{Levels, Noise, Op};

/// Checks `components` (one per row, or `None` for component 0 everywhere) against a batch of
/// `batch` rows and the model, and returns the component every row uses when they all use
/// the same one.
///
/// # Errors
/// `ShapeMismatch` when the length is not `batch`; `InvalidArgument` naming the first row
/// whose index is out of range.
pub(crate) fn check(
    model: &Model,
    components: Option<&[u32]>,
    batch: usize,
) -> Result<Option<usize>> {
    let Some(c) = components else {
        return Ok(Some(0));
    };
    if c.len() != batch {
        return Err(Error::shape(
            "component",
            format!("one index per row ({batch})"),
            c.len(),
        ));
    }
    let k = model.n_components();
    if let Some(row) = c.iter().position(|&v| v as usize >= k) {
        return Err(Error::arg(
            "component",
            format!(
                "row {row} asks for component {}, but the model has {k} component(s) (0..={})",
                c[row],
                k - 1
            ),
        ));
    }
    Ok(match c.first() {
        Some(&first) if c.iter().all(|&v| v == first) => Some(first as usize),
        _ => None,
    })
}

/// The rows of each component, in row order (empty for components no row uses).
pub(crate) fn groups(components: &[u32], n_components: usize) -> Vec<Vec<usize>> {
    let mut g = vec![Vec::new(); n_components];
    for (row, &c) in components.iter().enumerate() {
        g[c as usize].push(row);
    }
    g
}

/// Levels owned for the rows of one group.
enum Picked {
    One(Noise),
    PerRow(Vec<Noise>),
}

impl Picked {
    fn new(levels: Levels<'_>, rows: &[usize]) -> Picked {
        match levels {
            Levels::One(n) => Picked::One(n),
            Levels::PerRow(v) => Picked::PerRow(rows.iter().map(|&r| v[r]).collect()),
        }
    }

    fn get(&self) -> Levels<'_> {
        match self {
            Picked::One(n) => Levels::One(*n),
            Picked::PerRow(v) => Levels::PerRow(v),
        }
    }
}

/// The levels of `op` restricted to `rows` (per-row levels already checked against the batch).
pub(crate) struct GroupOp<'a> {
    op: Op<'a>,
    first: Picked,
    second: Option<Picked>,
}

impl<'a> GroupOp<'a> {
    pub fn new(op: Op<'a>, rows: &[usize]) -> GroupOp<'a> {
        let (first, second) = match op {
            Op::Skip { from, to } => (Picked::new(from, rows), Some(Picked::new(to, rows))),
            Op::Denoise { at } => (Picked::new(at, rows), None),
            Op::SkipTrajectory { from, .. } | Op::X0Trajectory { from, .. } => {
                (Picked::new(from, rows), None)
            }
        };
        GroupOp { op, first, second }
    }

    /// The operation on the group's rows.
    pub fn op(&self) -> Op<'_> {
        let first = self.first.get();
        match self.op {
            Op::Skip { .. } => Op::Skip {
                from: first,
                to: self.second.as_ref().expect("a skip has two levels").get(),
            },
            Op::Denoise { .. } => Op::Denoise { at: first },
            Op::SkipTrajectory { levels, .. } => Op::SkipTrajectory {
                from: first,
                levels,
            },
            Op::X0Trajectory { levels, .. } => Op::X0Trajectory {
                from: first,
                levels,
            },
        }
    }
}

/// Runs `op` on the rows of `x` (`batch x dim`) grouped by component: `run(component, op,
/// x_group, out_group)` computes one group into a buffer of its own; `out` (`slabs x batch x
/// dim`) is written only once every group has succeeded.
pub(crate) fn run_grouped<T: Copy>(
    model: &Model,
    op: Op<'_>,
    components: &[u32],
    x: &[T],
    out: &mut [T],
    mut run: impl FnMut(&Model, Op<'_>, &[T], &mut [T]) -> Result<()>,
) -> Result<()> {
    let d = model.dim();
    let batch = x.len() / d;
    let slabs = op.slabs();
    // Per-row levels must match the whole batch before they are split.
    op.validate(batch)?;
    let mut results = Vec::new();
    for (k, rows) in groups(components, model.n_components())
        .into_iter()
        .enumerate()
    {
        if rows.is_empty() {
            continue;
        }
        let n = rows.len();
        let mut gx = crate::error::try_vec(n * d, x[0], "a component's rows")?;
        for (i, &r) in rows.iter().enumerate() {
            gx[i * d..(i + 1) * d].copy_from_slice(&x[r * d..(r + 1) * d]);
        }
        let mut gout = crate::error::try_vec(slabs * n * d, x[0], "a component's output")?;
        let sub = GroupOp::new(op, &rows);
        run(model.part(k), sub.op(), &gx, &mut gout).map_err(|e| match e {
            // Name the caller's element, not the group's.
            Error::NonFinite { arg: "x", index } => Error::NonFinite {
                arg: "x",
                index: rows[index / d] * d + index % d,
            },
            e => e,
        })?;
        results.push((rows, gout));
    }
    for (rows, gout) in results {
        let n = rows.len();
        for s in 0..slabs {
            for (i, &r) in rows.iter().enumerate() {
                let src = &gout[(s * n + i) * d..(s * n + i + 1) * d];
                out[(s * batch + r) * d..(s * batch + r + 1) * d].copy_from_slice(src);
            }
        }
    }
    Ok(())
}
