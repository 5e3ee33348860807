//! The process's global allocator: mimalloc, entered where it is fastest.
//!
//! mimalloc instead of glibc malloc: per-thread free lists make the small,
//! short-lived allocations of every request (heads, header maps, boxed
//! futures) several times cheaper; glibc's malloc and free were a large
//! share of the HTTP/1.1 proxy path's instructions (benches/RESULTS.md).
//!
//! Written here rather than taken from the `mimalloc` crate because that
//! crate sends every allocation through `mi_malloc_aligned`, whose mimalloc
//! 3 implementation takes a generic, over-allocating path for any block
//! over 1 KiB or any free block it finds misaligned, which a proxied
//! HTTP/1.1 request did a dozen times (benches/RESULTS.md). Every mimalloc
//! block is a multiple of 8
//! bytes from a 16-byte aligned page start, so a layout aligned to 8 or
//! less needs no aligned entry point at all; only larger alignments take it.
//
// A global allocator is unsafe by nature: every block below carries its
// SAFETY comment.
#![allow(unsafe_code)]

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The alignment every mimalloc block has.
const BLOCK_ALIGN: usize = 8;

pub struct MeshAlloc;

// SAFETY: each method returns memory from mimalloc for `layout` (or null),
// aligned to `layout.align()`: plain entry points only when that is at most
// BLOCK_ALIGN, which every mimalloc block satisfies; the aligned entry
// points otherwise. mi_free accepts memory from any of them.
unsafe impl GlobalAlloc for MeshAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= BLOCK_ALIGN {
                mi::mi_malloc(layout.size()) as *mut u8
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= BLOCK_ALIGN {
                mi::mi_zalloc(layout.size()) as *mut u8
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe {
            if layout.align() <= BLOCK_ALIGN {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

unsafe extern "C" {
    /// mimalloc's process figures (in the C library libmimalloc-sys
    /// builds; its Rust binding sits behind a feature this crate leaves off).
    fn mi_process_info(
        elapsed_msecs: *mut usize,
        user_msecs: *mut usize,
        system_msecs: *mut usize,
        current_rss: *mut usize,
        peak_rss: *mut usize,
        current_commit: *mut usize,
        peak_commit: *mut usize,
        page_faults: *mut usize,
    );
}

/// The admin's `/memory`: mimalloc's committed bytes, now and at peak.
pub fn memory_info() -> meshgate_core::admin::MemoryInfo {
    let mut v = [0usize; 8];
    let [a, b, c, d, e, f, g, h] = &mut v;
    // SAFETY: every pointer is to a distinct live usize of this frame, as
    // mi_process_info writes one value through each.
    unsafe { mi_process_info(a, b, c, d, e, f, g, h) };
    meshgate_core::admin::MemoryInfo {
        allocator: "mimalloc",
        allocated: v[5] as u64,
        peak_allocated: v[6] as u64,
    }
}

// mimalloc's own entry point (libmimalloc-sys declares it only with its
// `extended` feature, which would build more of mimalloc).
unsafe extern "C" {
    fn mi_collect(force: bool);
}

/// Returns the memory mimalloc keeps free to the system (the overload
/// manager's `shrink_heap`).
pub fn release_free_memory() {
    // SAFETY: mi_collect takes no pointer and may be called from any thread.
    unsafe { mi_collect(true) }
}

/// Keeps the heap on 4 KiB pages (Linux): turns transparent huge pages
/// off for this process (`PR_SET_THP_DISABLE`), unless
/// `MIMALLOC_ALLOW_THP` is set, which then decides as mimalloc documents.
///
/// mimalloc asks for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`,
/// its `allow_thp` option, on by default), so on a kernel in THP `madvise`
/// or `always` mode every 2 MiB region the heap touches becomes resident
/// as a whole: the untouched part of each idle connection's buffers (h2's
/// 16 KiB write buffer holds a few hundred bytes) counts in full, and the
/// memory freed by closed connections stays resident. Measured with 2,000
/// idle h2c connections: 39.8 KB per connection with huge pages, 23.2 KB
/// without, and the baseline 30.6 MB -> 18.5 MB (benches/RESULTS.md, issue
/// 23). mimalloc reads its option at its first allocation, before `main`,
/// hence the process-wide switch here; the few pages faulted before it
/// keep their size.
pub fn keep_small_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and
        // changes nothing but this process's huge-page policy.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            // Before the logs exist: said on stderr (an old kernel or a
            // seccomp filter; meshgate runs on, with huge pages).
            eprintln!(
                "meshgate: PR_SET_THP_DISABLE refused: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// How often the tidy-up looks at the connection count.
const TIDY_EVERY: Duration = Duration::from_secs(1);
/// Closed connections (down from the peak) that make a tidy-up worth it:
/// at least this many, and at least a quarter of the peak.
const TIDY_MIN_CLOSED: u64 = 256;

/// Seconds after the start during which the tidy-up collects every second.
const STARTUP_COLLECTS: u32 = 30;

/// Bumped by each tidy-up; a worker that has not collected for the
/// current value does so before it next parks (`on_park`).
static TIDY_EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static TIDIED: Cell<u64> = const { Cell::new(0) };
}

/// Hands memory back to the system after many connections closed, with
/// no traffic needed. mimalloc only returns free pages (and purges them,
/// `madvise`) from inside its own calls on the thread that owns them, so
/// an idle process would otherwise stay at its peak until traffic
/// resumes. Off the request path: once a second this compares the
/// connection count with its peak since the last look, and only when a
/// quarter of the connections (at least `TIDY_MIN_CLOSED`) have closed
/// does it collect this thread's heap and ask every other worker to
/// collect its own (`on_park`). A steady churn of connections keeps the
/// count near its peak and never triggers it.
pub async fn tidy(workers: usize) {
    let mut tick = tokio::time::interval(TIDY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut high = 0u64;
    let mut ticks = 0u32;
    loop {
        tick.tick().await;
        // Once a second for the first STARTUP_COLLECTS seconds: the start's
        // config loads free their parse buffers (megabytes with 10,000
        // clusters), and mimalloc purges freed memory only from a later
        // call, which an idle process never makes: 10,000 clusters kept
        // ~3.5 KB each of it resident (benches/RESULTS.md, issue 23).
        if ticks < STARTUP_COLLECTS {
            ticks += 1;
            release_free_memory();
        }
        high = high.max(meshgate_core::overload::take_peak_connections());
        let now = meshgate_core::overload::active_connections();
        let closed = high.saturating_sub(now);
        if closed < TIDY_MIN_CLOSED || closed * 4 < high {
            continue;
        }
        high = now;
        let epoch = TIDY_EPOCH.fetch_add(1, Ordering::Relaxed) + 1;
        TIDIED.with(|t| t.set(epoch));
        release_free_memory();
        // The other workers collect before they next park; a few empty
        // tasks wake the parked ones (tokio unparks a worker for a task
        // it cannot run at once).
        for _ in 1..workers {
            tokio::spawn(async {});
        }
    }
}

/// The runtime's `on_thread_park` (work-stealing runtimes only): collects
/// this worker's heap once per tidy-up; otherwise one relaxed load.
pub fn on_park() {
    let epoch = TIDY_EPOCH.load(Ordering::Relaxed);
    if TIDIED.with(|t| t.replace(epoch)) != epoch {
        release_free_memory();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class up to 64 KiB, at every alignment up to 4 KiB, comes
    /// back aligned, writable, and survives a realloc.
    #[test]
    fn blocks_honour_their_layout() {
        let a = MeshAlloc;
        let mut live = Vec::new();
        for size in (1..=1024).chain((1..=64).map(|k| k * 1024)) {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let l = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; freed below with the same layout.
                unsafe {
                    let p = a.alloc(l);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let q = a.realloc(p, l, size * 2);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert_eq!(*q.add(size - 1), 0xa5);
                    live.push((q, Layout::from_size_align(size * 2, align).unwrap()));
                    let z = a.alloc_zeroed(l);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    a.dealloc(z, l);
                }
            }
        }
        for (p, l) in live {
            // SAFETY: allocated above with `l`.
            unsafe { a.dealloc(p, l) }
        }
    }
}
