//! What can be checked about a caller's device pointer without touching its memory: that the
//! driver knows it, that it lives on this context's device, and that the allocation behind it
//! is long enough.
//!
//! The allocation size comes from the driver's range attributes. Memory mapped with the
//! virtual-memory API (`cuMemMap`: PyTorch's `expandable_segments`) reports only the physical
//! chunk a pointer falls in, so for such memory the check walks the chunks that follow while
//! they are mapped, instead of rejecting a valid tensor that crosses a chunk boundary.

use std::ffi::c_void;

use cudarc::driver::sys;

use crate::error::{Error, Result};

/// Chunks walked at most for one virtual-memory buffer; beyond that the size is not checked.
const MAX_CHUNKS: usize = 4096;

/// One mapped range of device memory as the driver reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Range {
    pub start: u64,
    pub size: u64,
    /// Mapped through the virtual-memory API (its neighbours may continue the buffer).
    pub vmm: bool,
}

/// How many bytes from `ptr` on are backed by memory, following virtual-memory chunks;
/// `None` when that cannot be told (the range is unknown, or too many chunks).
pub(crate) fn available(ptr: u64, need: u64, query: &dyn Fn(u64) -> Option<Range>) -> Option<u64> {
    let first = query(ptr)?;
    if first.size == 0 {
        return None;
    }
    let mut end = first.start.checked_add(first.size)?;
    if !first.vmm {
        return Some(end.saturating_sub(ptr));
    }
    for _ in 0..MAX_CHUNKS {
        if end.saturating_sub(ptr) >= need {
            return Some(end - ptr);
        }
        match query(end) {
            Some(next) if next.vmm && next.start == end && next.size > 0 => {
                end = end.checked_add(next.size)?;
            }
            _ => return Some(end - ptr),
        }
    }
    None
}

/// The driver's view of one address.
fn query(p: u64) -> Option<Range> {
    let (mut start, mut size): (sys::CUdeviceptr, usize) = (0, 0);
    // SAFETY: attribute queries write one value of the documented type.
    let ok = unsafe {
        sys::cuPointerGetAttribute(
            &mut start as *mut u64 as *mut c_void,
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
            p,
        ) == sys::CUresult::CUDA_SUCCESS
            && sys::cuPointerGetAttribute(
                &mut size as *mut usize as *mut c_void,
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_RANGE_SIZE,
                p,
            ) == sys::CUresult::CUDA_SUCCESS
    };
    if !ok {
        return None;
    }
    let mut handle: sys::CUmemGenericAllocationHandle = 0;
    // SAFETY: succeeds only for cuMemMap'ed addresses; the retained handle is released at once.
    let vmm = unsafe { sys::cuMemRetainAllocationHandle(&mut handle, p as *mut c_void) }
        == sys::CUresult::CUDA_SUCCESS;
    if vmm {
        // SAFETY: releases the reference taken just above.
        let _ = unsafe { sys::cuMemRelease(handle) };
    }
    Some(Range {
        start,
        size: size as u64,
        vmm,
    })
}

/// Checks that `ptr .. ptr + bytes` is device memory of device `ordinal` that CUDA knows.
///
/// # Errors
/// `InvalidArgument` for host or unknown pointers and memory of another device,
/// `ShapeMismatch` for an allocation shorter than `bytes`.
///
/// # Safety
/// The context of device `ordinal` is current.
pub(crate) unsafe fn check_buffer(
    arg: &'static str,
    ptr: *const c_void,
    bytes: usize,
    ordinal: usize,
) -> Result<()> {
    let p = ptr as sys::CUdeviceptr;
    let mut mem_type: u32 = 0;
    let rc = sys::cuPointerGetAttribute(
        &mut mem_type as *mut u32 as *mut c_void,
        sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
        p,
    );
    if rc != sys::CUresult::CUDA_SUCCESS || mem_type == 0 {
        return Err(Error::arg(
            arg,
            format!("{ptr:p} is not memory CUDA knows ({rc:?}): a CUDA context takes device pointers; use a CPU context for host buffers"),
        ));
    }
    if mem_type == sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 {
        let mut dev: i32 = -1;
        let rc = sys::cuPointerGetAttribute(
            &mut dev as *mut i32 as *mut c_void,
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            p,
        );
        if rc == sys::CUresult::CUDA_SUCCESS && dev != ordinal as i32 {
            return Err(Error::arg(
                arg,
                format!("lives on CUDA device {dev}, but this context is device {ordinal}"),
            ));
        }
    }
    if let Some(have) = available(p, bytes as u64, &query) {
        if have < bytes as u64 {
            return Err(Error::shape(
                arg,
                format!("{bytes} bytes of device memory"),
                format!("an allocation with {have} bytes from {ptr:p} on"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake address space: (start, size, vmm) ranges.
    fn space(ranges: &[(u64, u64, bool)]) -> impl Fn(u64) -> Option<Range> + '_ {
        move |p| {
            ranges
                .iter()
                .find(|&&(s, n, _)| p >= s && p < s + n)
                .map(|&(start, size, vmm)| Range { start, size, vmm })
        }
    }

    #[test]
    fn an_ordinary_allocation_is_its_own_range() {
        let q = space(&[(1000, 400, false), (1400, 400, false)]);
        assert_eq!(available(1100, 300, &q), Some(300));
        // an adjacent ordinary allocation never extends a buffer
        assert_eq!(available(1100, 500, &q), Some(300));
    }

    #[test]
    fn virtual_memory_chunks_that_follow_each_other_make_one_buffer() {
        // expandable segments: 2 MB chunks mapped back to back
        let mb2 = 2 << 20;
        let chunks = [(0, mb2, true), (mb2, mb2, true), (2 * mb2, mb2, true)];
        let q = space(&chunks);
        assert_eq!(available(mb2 - 64, 64 + mb2 + 10, &q), Some(64 + 2 * mb2));
        assert_eq!(available(100, 10, &q), Some(mb2 - 100));
    }

    #[test]
    fn a_hole_or_a_non_vmm_neighbour_ends_a_virtual_memory_buffer() {
        let q = space(&[(0, 100, true), (200, 100, true)]);
        assert_eq!(available(50, 200, &q), Some(50));
        let q = space(&[(0, 100, true), (100, 100, false)]);
        assert_eq!(available(50, 100, &q), Some(50));
    }

    #[test]
    fn unknown_ranges_are_not_judged() {
        let q = space(&[]);
        assert_eq!(available(5, 10, &q), None);
        let q = space(&[(0, 0, false)]);
        assert_eq!(available(0, 10, &q), None);
    }
}
