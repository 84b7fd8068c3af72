//! Device memory of a CUDA context: the context's own stream-ordered pool, per-call scratch,
//! the device copies of models (freed when their model is freed), pinned staging for level
//! tables, and the ring of events that tracks the library's eager work.
//!
//! Scratch is allocated for each call from the pool on the caller's stream and freed on that
//! stream after the call's kernels (`cuMemAllocFromPoolAsync` / `cuMemFreeAsync`): calls on
//! different streams never share it, nothing waits on the host, and inside a graph capture the
//! allocation becomes the graph's own memory node, so a captured call needs no warm-up of its
//! scratch and replays of different graphs never share it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Mutex, Weak};

use cudarc::driver::sys;
use half::f16;

use crate::context::EigvecStorage;
use crate::error::Result;
use crate::model::Model;

use super::args::GsComponent;
use super::driver::{check, Current, Relaxed};

/// Unused pool memory kept after a synchronisation instead of being returned to the driver,
/// so that steady-state calls reuse their scratch.
const POOL_KEEP_BYTES: u64 = 256 << 20;
/// Eager calls tracked at once; the oldest is waited for when the ring wraps around.
const RING: usize = 64;
/// Pinned slots for level tables; a slot is reused once its upload has completed.
const STAGING_SLOTS: usize = 4;

/// What every owner of device memory of one context shares: the retained primary context,
/// its pool, the library's own stream, and the in-flight ring. Freed last.
pub(crate) struct Device {
    pub ctx: sys::CUcontext,
    pub dev: sys::CUdevice,
    pub pool: sys::CUmemoryPool,
    /// The library's stream: model uploads, host-buffer calls, deferred frees.
    pub stream: sys::CUstream,
    ring: Mutex<Ring>,
    staging: Mutex<Vec<Slot>>,
}

// SAFETY: the raw handles are driver objects usable from any thread once the context is
// current (every user makes it current first); mutable state is behind mutexes.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

struct Ring {
    events: Vec<sys::CUevent>,
    recorded: Vec<bool>,
    next: usize,
}

struct Slot {
    host: *mut c_void,
    bytes: usize,
    event: sys::CUevent,
    recorded: bool,
}

fn event() -> Result<sys::CUevent> {
    let mut e: sys::CUevent = ptr::null_mut();
    // SAFETY: creates one event owned by the caller.
    check(
        unsafe { sys::cuEventCreate(&mut e, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32) },
        "creating an event",
    )?;
    Ok(e)
}

/// Waits for the last work recorded on `e` unless it is known to be complete.
///
/// # Safety
/// `e` is a live event last recorded outside any capture.
unsafe fn settle(e: sys::CUevent) -> Result<()> {
    match sys::cuEventQuery(e) {
        sys::CUresult::CUDA_SUCCESS => Ok(()),
        sys::CUresult::CUDA_ERROR_NOT_READY => {
            check(sys::cuEventSynchronize(e), "waiting for earlier work")
        }
        rc => check(rc, "querying earlier work"),
    }
}

impl Device {
    /// Takes over the retained primary context `ctx` of `dev` (current on this thread) and
    /// creates its pool, stream and events; on error everything, the retain included, is
    /// released.
    ///
    /// # Errors
    /// `Cuda`/`OutOfMemory` from the driver.
    pub fn new(ctx: sys::CUcontext, dev: sys::CUdevice, ordinal: usize) -> Result<Device> {
        let mut d = Device {
            ctx,
            dev,
            pool: ptr::null_mut(),
            stream: ptr::null_mut(),
            ring: Mutex::new(Ring {
                events: Vec::with_capacity(RING),
                recorded: vec![false; RING],
                next: 0,
            }),
            staging: Mutex::new(Vec::new()),
        };
        // SAFETY: plain driver object creation into d's fields; d's Drop releases what exists.
        unsafe {
            let mut props: sys::CUmemPoolProps = std::mem::zeroed();
            props.allocType = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
            props.handleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE;
            props.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
            props.location.id = ordinal as i32;
            check(
                sys::cuMemPoolCreate(&mut d.pool, &props),
                "creating a memory pool",
            )?;
            let mut keep = POOL_KEEP_BYTES;
            check(
                sys::cuMemPoolSetAttribute(
                    d.pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    &mut keep as *mut u64 as *mut c_void,
                ),
                "setting the pool's release threshold",
            )?;
            check(
                sys::cuStreamCreate(
                    &mut d.stream,
                    sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
                ),
                "creating the context's stream",
            )?;
            let ring = d.ring.get_mut().unwrap_or_else(|e| e.into_inner());
            for _ in 0..RING {
                ring.events.push(event()?);
            }
        }
        Ok(d)
    }

    /// Allocates `bytes` from the pool in `stream`'s order (a graph memory node inside a
    /// capture).
    ///
    /// # Safety
    /// The context is current; `stream` is live.
    pub unsafe fn alloc(&self, bytes: usize, stream: sys::CUstream, what: &str) -> Result<u64> {
        let mut p: sys::CUdeviceptr = 0;
        check(
            sys::cuMemAllocFromPoolAsync(&mut p, bytes.max(1), self.pool, stream),
            what,
        )?;
        Ok(p)
    }

    /// Frees `p` in `stream`'s order.
    ///
    /// # Safety
    /// `p` came from [`Device::alloc`] and nothing enqueued after this call uses it.
    pub unsafe fn free(&self, p: u64, stream: sys::CUstream) {
        let _ = sys::cuMemFreeAsync(p, stream);
    }

    /// Records the end of an eager call on `stream`, so that a later free of a model the call
    /// used can wait for it. Not for capturing streams.
    ///
    /// # Safety
    /// The context is current; `stream` is live and not capturing.
    pub unsafe fn track(&self, stream: sys::CUstream) -> Result<()> {
        let _relaxed = Relaxed::new();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let i = ring.next;
        if ring.recorded[i] {
            settle(ring.events[i])?;
        }
        check(
            sys::cuEventRecord(ring.events[i], stream),
            "recording a call",
        )?;
        ring.recorded[i] = true;
        ring.next = (i + 1) % RING;
        Ok(())
    }

    /// Makes the context's stream wait for every tracked call (no host wait).
    ///
    /// # Safety
    /// The context is current.
    unsafe fn after_tracked_work(&self) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        for (e, &rec) in ring.events.iter().zip(&ring.recorded) {
            if rec {
                let _ = sys::cuStreamWaitEvent(self.stream, *e, 0);
            }
        }
    }

    /// Bytes of the pool in use now (models and scratch of calls in flight).
    pub fn used_bytes(&self) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: the attribute is a cuuint64_t.
        let _ = unsafe {
            sys::cuMemPoolGetAttribute(
                self.pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
                &mut v as *mut u64 as *mut c_void,
            )
        };
        v
    }

    /// Waits on the host for every tracked call and the context's stream.
    ///
    /// # Safety
    /// The context is current.
    pub unsafe fn quiesce(&self) {
        let _relaxed = Relaxed::new();
        self.after_tracked_work();
        let _ = sys::cuStreamSynchronize(self.stream);
    }

    /// Copies `bytes` of host data to device address `dst` in `stream`'s order through a
    /// pinned staging slot (the caller's buffer may be reused as soon as this returns).
    ///
    /// # Safety
    /// The context is current; `stream` is live and not capturing; `dst` holds `bytes`.
    pub unsafe fn upload_staged(&self, dst: u64, data: &[u8], stream: sys::CUstream) -> Result<()> {
        let _relaxed = Relaxed::new();
        let mut slots = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        while slots.len() < STAGING_SLOTS {
            slots.push(Slot {
                host: ptr::null_mut(),
                bytes: 0,
                event: event()?,
                recorded: false,
            });
        }
        // the least recently used slot is the first one; rotate it to the back when done
        let slot = &mut slots[0];
        if slot.recorded {
            settle(slot.event)?;
            slot.recorded = false;
        }
        if slot.bytes < data.len() {
            if !slot.host.is_null() {
                let _ = sys::cuMemFreeHost(slot.host);
                slot.host = ptr::null_mut();
                slot.bytes = 0;
            }
            let want = data.len().max(4096);
            let mut host: *mut c_void = ptr::null_mut();
            check(
                sys::cuMemAllocHost_v2(&mut host, want),
                "allocating pinned staging for levels",
            )?;
            slot.host = host;
            slot.bytes = want;
        }
        ptr::copy_nonoverlapping(data.as_ptr(), slot.host as *mut u8, data.len());
        check(
            sys::cuMemcpyHtoDAsync_v2(dst, slot.host, data.len(), stream),
            "uploading levels",
        )?;
        check(
            sys::cuEventRecord(slot.event, stream),
            "recording a level upload",
        )?;
        slot.recorded = true;
        slots.rotate_left(1);
        Ok(())
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Ok(_current) = Current::make(self.ctx) {
            let _relaxed = Relaxed::new();
            // SAFETY: every handle below was created by this value and is destroyed once; the
            // stream is drained first, and the pool frees itself once its outstanding
            // allocations (graph-owned ones excepted, which belong to their graphs) are freed.
            unsafe {
                if !self.stream.is_null() {
                    self.after_tracked_work();
                    let _ = sys::cuStreamSynchronize(self.stream);
                    let _ = sys::cuStreamDestroy_v2(self.stream);
                }
                let ring = self.ring.get_mut().unwrap_or_else(|e| e.into_inner());
                for e in ring.events.drain(..) {
                    let _ = sys::cuEventDestroy_v2(e);
                }
                for s in self
                    .staging
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .drain(..)
                {
                    let _ = sys::cuEventDestroy_v2(s.event);
                    if !s.host.is_null() {
                        let _ = sys::cuMemFreeHost(s.host);
                    }
                }
                if !self.pool.is_null() {
                    let _ = sys::cuMemPoolDestroy(self.pool);
                }
            }
        }
        // SAFETY: releases the retain this value took over.
        let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.dev) };
    }
}

/// A model's arrays on the device, in one allocation, and its component table (the kernels'
/// `GsComponent` entries pointing into it).
pub(crate) struct DeviceModel {
    device: Arc<Device>,
    base: u64,
    pub components: u64,
    /// The one-entry component table's entry (for grouped calls' own tables).
    pub entry: GsComponent,
}

impl Drop for DeviceModel {
    fn drop(&mut self) {
        let Ok(_current) = Current::make(self.device.ctx) else {
            return;
        };
        let _relaxed = Relaxed::new();
        // SAFETY: the free is ordered after every tracked eager call (the only users besides
        // captured graphs, which must not outlive their model: see the README).
        unsafe {
            self.device.after_tracked_work();
            self.device.free(self.base, self.device.stream);
        }
    }
}

fn round_up(n: usize) -> usize {
    n.div_ceil(256) * 256
}

/// The device copies of the models a context has used, each released when its model is
/// dropped (or by [`ModelCache::release`]).
pub(crate) struct ModelCache {
    device: Arc<Device>,
    storage: EigvecStorage,
    models: Mutex<HashMap<u64, Arc<DeviceModel>>>,
}

impl ModelCache {
    pub fn new(device: Arc<Device>, storage: EigvecStorage) -> Arc<ModelCache> {
        Arc::new(ModelCache {
            device,
            storage,
            models: Mutex::new(HashMap::new()),
        })
    }

    /// The device copy of `model`, if uploaded.
    pub fn get(&self, model: &Model) -> Option<Arc<DeviceModel>> {
        let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        models.get(&model.id()).cloned()
    }

    /// Uploads `model` (once) on the context's stream and waits for the copy, so that work on
    /// any stream may use it afterwards.
    ///
    /// # Errors
    /// `OutOfMemory`/`Cuda` from the driver.
    ///
    /// # Safety
    /// The context is current.
    pub unsafe fn upload(self: &Arc<Self>, model: &Model) -> Result<Arc<DeviceModel>> {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = models.get(&model.id()) {
            return Ok(m.clone());
        }
        let mut bytes: Vec<u8> = Vec::new();
        let mean = 0;
        bytes.extend(model.mean().iter().flat_map(|v| v.to_le_bytes()));
        let eigvals = round_up(bytes.len());
        bytes.resize(eigvals, 0);
        bytes.extend(model.eigvals().iter().flat_map(|v| v.to_le_bytes()));
        let eigvecs = round_up(bytes.len());
        bytes.resize(eigvecs, 0);
        match self.storage {
            EigvecStorage::F16 => bytes.extend(
                model
                    .eigvecs()
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes()),
            ),
            EigvecStorage::F32 => {
                bytes.extend(model.eigvecs().iter().flat_map(|v| v.to_le_bytes()))
            }
        }
        let table = round_up(bytes.len());
        let total = table + std::mem::size_of::<GsComponent>();
        let _relaxed = Relaxed::new();
        let d = &self.device;
        let base = d.alloc(total, d.stream, "allocating the model on the device")?;
        let entry = GsComponent {
            mean: base + mean as u64,
            eigvecs: base + eigvecs as u64,
            eigvals: base + eigvals as u64,
            rank: model.rank() as i64,
        };
        bytes.resize(table, 0);
        bytes.extend(
            [entry.mean, entry.eigvecs, entry.eigvals, entry.rank as u64]
                .iter()
                .flat_map(|v| v.to_le_bytes()),
        );
        let copied = check(
            sys::cuMemcpyHtoDAsync_v2(base, bytes.as_ptr() as *const c_void, bytes.len(), d.stream),
            "uploading the model",
        )
        .and_then(|_| check(sys::cuStreamSynchronize(d.stream), "uploading the model"));
        if let Err(e) = copied {
            d.free(base, d.stream);
            return Err(e);
        }
        let dm = Arc::new(DeviceModel {
            device: d.clone(),
            base,
            components: base + table as u64,
            entry,
        });
        models.insert(model.id(), dm.clone());
        let cache: Weak<ModelCache> = Arc::downgrade(self);
        model.on_drop(Box::new(move |id| {
            if let Some(cache) = cache.upgrade() {
                cache.forget(id);
            }
        }));
        Ok(dm)
    }

    /// Drops the device copy of model `id` (freed once calls that use it are done).
    pub fn forget(&self, id: u64) {
        let gone = {
            let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            models.remove(&id)
        };
        drop(gone);
    }

    /// Number of models on the device (for tests).
    pub fn len(&self) -> usize {
        self.models.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
