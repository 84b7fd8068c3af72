//! The embedded kernels: loading the fatbin when a context is created (never lazily inside a
//! call that may be captured), looking up the entry points of both kernel versions (24 each),
//! version 2's dynamic shared memory, and their occupancy.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::ptr;

use cudarc::driver::sys;

use crate::backend::KernelVersion;
use crate::context::EigvecStorage;
use crate::dtype::Dtype;
use crate::error::Result;

use super::driver::check;

/// The compiled kernels: built by build.rs with nvcc when one is found, otherwise the committed
/// `kernels/prebuilt/gaussskip.fatbin` (sm_80 and sm_90 code, compute_90 PTX).
static FATBIN: &[u8] = include_bytes!(env!("GAUSSSKIP_FATBIN"));

/// Where the embedded kernels came from: `nvcc <version>` or `prebuilt`.
pub const FATBIN_ORIGIN: &str = env!("GAUSSSKIP_FATBIN_ORIGIN");

/// Threads per block of every kernel.
pub(crate) const THREADS: u32 = 128;

/// Which of the two launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Stage {
    Project,
    Backproject,
}

impl Stage {
    /// Tile heights compiled for this launch (kernels/skip.cu, `GS_KERNELS`).
    pub fn heights(self) -> [usize; 2] {
        match self {
            Stage::Project => [32, 64],
            Stage::Backproject => [32, 128],
        }
    }
}

/// One entry point, its dynamic shared memory and how many of its blocks fit on a
/// multiprocessor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kernel {
    pub func: sys::CUfunction,
    pub blocks_per_sm: u32,
    /// Bytes of dynamic shared memory per block (version 2's pipeline stages; 0 for version 1).
    pub smem: u32,
}

/// The loaded module of one context.
pub(crate) struct Kernels {
    ctx: sys::CUcontext,
    module: sys::CUmodule,
    table: HashMap<(KernelVersion, Stage, Dtype, usize), Kernel>,
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::F16 => "f16",
        Dtype::BF16 => "bf16",
    }
}

/// `gs_{project,backproject}_<x dtype>x_<eigvec dtype>u_bm<rows>` (version 1), `gs2_...`
/// (version 2).
pub(crate) fn kernel_name(
    version: KernelVersion,
    stage: Stage,
    x: Dtype,
    storage: EigvecStorage,
    bm: usize,
) -> String {
    let prefix = match version {
        KernelVersion::V1 => "gs",
        KernelVersion::V2 => "gs2",
    };
    let launch = match stage {
        Stage::Project => "project",
        Stage::Backproject => "backproject",
    };
    let u = match storage {
        EigvecStorage::F16 => "f16",
        EigvecStorage::F32 => "f32",
    };
    format!("{prefix}_{launch}_{}x_{u}u_bm{bm}", dtype_name(x))
}

/// Version 2's dynamic shared memory of kernel `name`: the module's constant `<name>_smem`.
///
/// # Safety
/// `module` is loaded in the current context.
unsafe fn dynamic_smem(module: sys::CUmodule, name: &str) -> Result<u32> {
    let cname = CString::new(format!("{name}_smem")).expect("kernel names hold no NUL");
    let mut ptr: sys::CUdeviceptr = 0;
    let mut bytes = 0usize;
    check(
        sys::cuModuleGetGlobal_v2(&mut ptr, &mut bytes, module, cname.as_ptr()),
        &format!("the shared-memory size of {name} is missing from the module"),
    )?;
    let mut v = 0u32;
    if bytes != std::mem::size_of::<u32>() {
        return Err(crate::error::Error::Cuda(format!(
            "{name}_smem has {bytes} bytes, expected 4"
        )));
    }
    check(
        sys::cuMemcpyDtoH_v2(&mut v as *mut u32 as *mut c_void, ptr, 4),
        &format!("reading the shared-memory size of {name}"),
    )?;
    Ok(v)
}

impl Kernels {
    /// Loads the fatbin into the current context and resolves every entry point for `storage`.
    ///
    /// # Errors
    /// `Cuda` when the module does not load (driver too old for the PTX, no matching SASS) or
    /// an entry point is missing.
    ///
    /// # Safety
    /// `ctx` is live and current on this thread.
    pub unsafe fn load(
        ctx: sys::CUcontext,
        storage: EigvecStorage,
        device: &str,
    ) -> Result<Kernels> {
        // The driver reads the fatbin through its header; give it 8-byte alignment.
        let mut image = vec![0u64; FATBIN.len() / 8 + 1];
        ptr::copy_nonoverlapping(FATBIN.as_ptr(), image.as_mut_ptr() as *mut u8, FATBIN.len());
        let mut module: sys::CUmodule = ptr::null_mut();
        check(
            sys::cuModuleLoadData(&mut module, image.as_ptr() as *const c_void),
            &format!(
                "loading the kernels ({FATBIN_ORIGIN}) on {device}: the fatbin holds sm_80/sm_90 code and compute_90 PTX, which needs a CUDA 13 driver"
            ),
        )?;
        let mut kernels = Kernels {
            ctx,
            module,
            table: HashMap::new(),
        };
        for version in [KernelVersion::V1, KernelVersion::V2] {
            for stage in [Stage::Project, Stage::Backproject] {
                for x in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                    for bm in stage.heights() {
                        let name = kernel_name(version, stage, x, storage, bm);
                        let kernel = Self::resolve(module, version, &name)?;
                        kernels.table.insert((version, stage, x, bm), kernel);
                    }
                }
            }
        }
        Ok(kernels)
    }

    /// Looks up entry point `name`, allows it its dynamic shared memory (above 48 KB needs
    /// the opt-in) and reads its occupancy with that memory.
    ///
    /// # Safety
    /// `module` is loaded in the current context.
    unsafe fn resolve(module: sys::CUmodule, version: KernelVersion, name: &str) -> Result<Kernel> {
        let cname = CString::new(name).expect("kernel names hold no NUL");
        let mut func: sys::CUfunction = ptr::null_mut();
        check(
            sys::cuModuleGetFunction(&mut func, module, cname.as_ptr()),
            &format!("kernel {name} is missing from the module"),
        )?;
        let smem = match version {
            KernelVersion::V1 => 0,
            KernelVersion::V2 => dynamic_smem(module, name)?,
        };
        if smem > 0 {
            check(
                sys::cuFuncSetAttribute(
                    func,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                ),
                &format!("allowing {name} {smem} bytes of shared memory"),
            )?;
        }
        let mut blocks: i32 = 0;
        check(
            sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                &mut blocks,
                func,
                THREADS as i32,
                smem as usize,
            ),
            &format!("reading the occupancy of {name}"),
        )?;
        Ok(Kernel {
            func,
            blocks_per_sm: blocks.max(1) as u32,
            smem,
        })
    }

    /// The entry point of `version` and `stage` for rows of `x` and tile height `bm`.
    pub fn get(&self, version: KernelVersion, stage: Stage, x: Dtype, bm: usize) -> Kernel {
        self.table[&(version, stage, x, bm)]
    }
}

impl Drop for Kernels {
    fn drop(&mut self) {
        if let Ok(_current) = super::driver::Current::make(self.ctx) {
            // SAFETY: loaded in load(), unloaded once, with its context current.
            let _ = unsafe { sys::cuModuleUnload(self.module) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn the_embedded_fatbin_holds_every_entry_point_of_both_versions() {
        // Symbol names are plain strings in the fatbin's ELF images: a stale fatbin (kernels
        // renamed, version 2 missing) fails here instead of on the first GPU.
        for version in [KernelVersion::V1, KernelVersion::V2] {
            for storage in [EigvecStorage::F16, EigvecStorage::F32] {
                for stage in [Stage::Project, Stage::Backproject] {
                    for x in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                        for bm in stage.heights() {
                            let name = kernel_name(version, stage, x, storage, bm);
                            assert!(contains(FATBIN, &name), "{name} is not in the fatbin");
                            if version == KernelVersion::V2 {
                                let smem = format!("{name}_smem");
                                assert!(contains(FATBIN, &smem), "{smem} is not in the fatbin");
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(
            kernel_name(
                KernelVersion::V2,
                Stage::Backproject,
                Dtype::BF16,
                EigvecStorage::F16,
                128
            ),
            "gs2_backproject_bf16x_f16u_bm128"
        );
    }
}
