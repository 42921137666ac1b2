//! The global allocator: the system's, except that blocks of 2 MiB and more (the
//! rate-limit sketch rows, the nonce store) are 2 MiB-aligned, rounded up to whole
//! 2 MiB pages and marked for transparent huge pages (`MADV_HUGEPAGE`; the kernel's
//! default `madvise` mode only backs marked memory with them).
//!
//! Why: a limiter check reads one counter in each of eight sketches spread over many
//! megabytes. With 4 KiB pages nearly every read also misses the TLB, and under
//! virtualisation a page walk costs several memory reads; with 2 MiB pages the
//! sketches of 10,000 sites need eight TLB entries. Measured with `cargo bench --bench
//! limiter` (README, Benchmarks).

use std::alloc::{GlobalAlloc, Layout, System};

/// The size of a transparent huge page on x86-64 and aarch64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

pub struct Allocator;

/// The layout a large block is really allocated with; `None` for ordinary blocks.
fn huge(layout: Layout) -> Option<Layout> {
    if layout.size() < HUGE_PAGE {
        return None;
    }
    let size = layout.size().checked_next_multiple_of(HUGE_PAGE)?;
    Layout::from_size_align(size, layout.align().max(HUGE_PAGE)).ok()
}

fn advise(p: *mut u8, layout: Layout) -> *mut u8 {
    if !p.is_null() {
        // SAFETY: `p` starts a block of `layout.size()` bytes we own, aligned to a page;
        // the advice only changes how the kernel backs it (failure is harmless).
        unsafe { libc::madvise(p.cast(), layout.size(), libc::MADV_HUGEPAGE) };
    }
    p
}

// SAFETY: every block is allocated and freed by `System` with the same layout (`huge`
// is a pure function of the caller's layout), aligned at least as the caller asked.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match huge(layout) {
            Some(h) => advise(unsafe { System.alloc(h) }, h),
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match huge(layout) {
            // Advise before the first write: `System` zeroes an over-aligned block by
            // writing it, which would fault it in as small pages.
            Some(h) => {
                let p = advise(unsafe { System.alloc(h) }, h);
                if !p.is_null() {
                    unsafe { std::ptr::write_bytes(p, 0, h.size()) };
                }
                p
            }
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, huge(layout).unwrap_or(layout)) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if huge(layout).is_none() && new_size < HUGE_PAGE {
            return unsafe { System.realloc(p, layout, new_size) };
        }
        // Into or out of the large class: allocate, copy, free.
        let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let q = unsafe { self.alloc(new) };
        if !q.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                self.dealloc(p, layout);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Allocator = Allocator;

/// Hand freed heap memory back to the kernel. glibc keeps freed blocks mapped for
/// reuse, so the temporary structures of a config load (the YAML tree and the raw
/// config of 10,000 sites: about 10 MB) stayed resident for the life of the process.
/// Called after a config is loaded and installed; takes each arena's lock briefly.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heap, under glibc's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_goes_back_to_the_kernel() {
        let start = resident_bytes();
        // Many small blocks, as a config load leaves them, written so they are resident.
        let blocks: Vec<Vec<u8>> = (0..200_000).map(|i| vec![i as u8; 100]).collect();
        let before_free = resident_bytes();
        drop(blocks);
        let freed = resident_bytes();
        release_free_memory();
        let trimmed = resident_bytes();
        // ~24 MB were allocated; glibc keeps most of it after `drop`, the trim returns it.
        assert!(
            before_free > start + (16 << 20),
            "{start} before, {before_free} with blocks"
        );
        assert!(
            freed.saturating_sub(trimmed) > 8 << 20,
            "resident {freed} after free, {trimmed} after trim"
        );
    }

    #[test]
    fn large_blocks_are_huge_page_aligned_and_sized() {
        let l = Layout::from_size_align(3 << 20, 8).unwrap();
        let h = huge(l).unwrap();
        assert_eq!((h.size(), h.align()), (4 << 20, HUGE_PAGE));
        assert!(huge(Layout::from_size_align(HUGE_PAGE - 1, 8).unwrap()).is_none());
        // Through the global allocator: aligned, usable, growable and shrinkable.
        let mut v: Vec<u64> = Vec::with_capacity(HUGE_PAGE / 8);
        assert_eq!(v.as_ptr() as usize % HUGE_PAGE, 0);
        v.extend(0..(HUGE_PAGE / 8) as u64);
        v.push(1);
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(v[9], 9);
    }
}
