//! f32 arrays that start on a cache line (64 bytes).
//!
//! The small-batch kernels read the eigenvector rows in place with 32- and 64-byte loads. A
//! large `Vec<f32>` from the system allocator starts 16 bytes past a page, so that every
//! 64-byte load crossed two cache lines: at 3072 x 768, one row, one core, a scratch loop
//! took a quarter longer than on the same rows starting on a line. When the dimension is a
//! multiple of 16, every row of an aligned array starts on a line too.

use crate::error::{Error, Result};

/// Bytes of a cache line.
pub(crate) const LINE: usize = 64;

/// A `Vec<f32>` whose elements start at index `start`, on a cache line.
pub(crate) struct AlignedF32 {
    buf: Vec<f32>,
    start: usize,
}

impl AlignedF32 {
    /// `values`, moved up in place to the next cache line when needed (the vector grows by at
    /// most 15 elements; with that room already reserved nothing is reallocated).
    ///
    /// # Errors
    /// `OutOfMemory` naming `what` when the room cannot be reserved.
    pub(crate) fn from_vec(mut values: Vec<f32>, what: &str) -> Result<AlignedF32> {
        let len = values.len();
        if pad(values.as_ptr()) == 0 {
            return Ok(AlignedF32 {
                buf: values,
                start: 0,
            });
        }
        values
            .try_reserve_exact(LINE / 4 - 1)
            .map_err(|_| Error::OutOfMemory(format!("{what}: {len} f32 elements")))?;
        let start = pad(values.as_ptr());
        values.resize(len + start, 0.0);
        values.copy_within(0..len, start);
        Ok(AlignedF32 { buf: values, start })
    }

    /// The elements.
    pub(crate) fn as_slice(&self) -> &[f32] {
        &self.buf[self.start..]
    }
}

/// Elements from `p` to the next cache line (0 when `p` is on one).
fn pad(p: *const f32) -> usize {
    (LINE - p as usize % LINE) % LINE / 4
}

impl std::ops::Deref for AlignedF32 {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl std::fmt::Debug for AlignedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the allocator's offset, the result starts on a line and holds the same
    /// values; an aligned input is kept in place. Vectors of many sizes, kept alive, meet
    /// several offsets (the large ones start 16 bytes past a page with glibc).
    #[test]
    fn moves_values_to_a_line() {
        let mut kept = Vec::new();
        let mut moved = 0;
        for len in [0, 1, 3, 5, 15, 16, 17, 33, 1000, 100_000] {
            for round in 0..16 {
                let v: Vec<f32> = (0..len + round).map(|i| i as f32 * 0.5).collect();
                let want = v.clone();
                let before = v.as_ptr();
                let a = AlignedF32::from_vec(v, "test").unwrap();
                assert_eq!(a.as_ptr() as usize % LINE, 0, "len {len}");
                assert_eq!(&a[..], &want[..], "len {len}");
                if (before as usize).is_multiple_of(LINE) {
                    assert_eq!(a.as_ptr(), before, "an aligned vector is kept");
                } else {
                    moved += 1;
                }
                kept.push(a);
            }
        }
        eprintln!("{moved} of {} vectors were moved to a line", kept.len());
    }
}
