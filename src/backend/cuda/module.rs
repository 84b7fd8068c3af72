//! The embedded kernels: loading the fatbin when a context is created (never lazily inside a
//! call that may be captured), looking up the 24 entry points and their occupancy.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::ptr;

use cudarc::driver::sys;

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

/// One entry point and how many of its blocks fit on a multiprocessor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kernel {
    pub func: sys::CUfunction,
    pub blocks_per_sm: u32,
}

/// The loaded module of one context.
pub(crate) struct Kernels {
    ctx: sys::CUcontext,
    module: sys::CUmodule,
    table: HashMap<(Stage, Dtype, usize), Kernel>,
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::F16 => "f16",
        Dtype::BF16 => "bf16",
    }
}

/// `gs_{project,backproject}_<x dtype>x_<eigvec dtype>u_bm<rows>`.
pub(crate) fn kernel_name(stage: Stage, x: Dtype, storage: EigvecStorage, bm: usize) -> String {
    let launch = match stage {
        Stage::Project => "project",
        Stage::Backproject => "backproject",
    };
    let u = match storage {
        EigvecStorage::F16 => "f16",
        EigvecStorage::F32 => "f32",
    };
    format!("gs_{launch}_{}x_{u}u_bm{bm}", dtype_name(x))
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
        for stage in [Stage::Project, Stage::Backproject] {
            for x in [Dtype::F32, Dtype::F16, Dtype::BF16] {
                for bm in stage.heights() {
                    let name = kernel_name(stage, x, storage, bm);
                    let cname = CString::new(name.clone()).expect("kernel names hold no NUL");
                    let mut func: sys::CUfunction = ptr::null_mut();
                    check(
                        sys::cuModuleGetFunction(&mut func, module, cname.as_ptr()),
                        &format!("kernel {name} is missing from the module"),
                    )?;
                    let mut blocks: i32 = 0;
                    check(
                        sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                            &mut blocks,
                            func,
                            THREADS as i32,
                            0,
                        ),
                        &format!("reading the occupancy of {name}"),
                    )?;
                    kernels.table.insert(
                        (stage, x, bm),
                        Kernel {
                            func,
                            blocks_per_sm: blocks.max(1) as u32,
                        },
                    );
                }
            }
        }
        Ok(kernels)
    }

    /// The entry point of `stage` for rows of `x` and tile height `bm`.
    pub fn get(&self, stage: Stage, x: Dtype, bm: usize) -> Kernel {
        self.table[&(stage, x, bm)]
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
