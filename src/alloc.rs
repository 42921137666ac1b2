//! The global allocator: mimalloc, except that blocks of 2 MiB and more (the nonce
//! store, the limiter's counters past about 260,000 sites) are mappings of their own,
//! 2 MiB-aligned and rounded up to whole 2 MiB pages; those of the request path's hot
//! tables ([`hot_tables`]) are marked for transparent huge pages (`MADV_HUGEPAGE`; the
//! kernel's default `madvise` mode only backs marked memory with them). A large block that grows is moved with `mremap`, not copied: serde_yaml's event
//! list of a 100,000-site config grows to hundreds of MB, and copying it at each doubling
//! into freshly zeroed pages was a quarter of a config load. Freeing one unmaps it at once.
//!
//! Why: a limiter check reads one counter in each of eight arrays, and a nonce check
//! probes a table, spread over many megabytes. With 4 KiB pages nearly every read also
//! misses the TLB, and under virtualisation a page walk costs several memory reads; with
//! 2 MiB pages a few TLB entries cover them. Measured with `cargo bench --bench limiter`
//! (README, Benchmarks), when the site counters were 16 MiB of sketches.
//!
//! Why mimalloc for the rest: with work stealing (on by default) a request's task moves
//! between worker threads, so much of what one thread allocates another frees. glibc's
//! malloc takes the owning arena's lock for such a free; mimalloc queues it to the owning
//! page without a lock. Same-run A/B with `bench/ab.sh` (make bench's config, wrk, 4 rounds):
//! keygate 1.28× the requests a second at 0.77× the CPU per request; the bare Pingora proxy
//! 1.16× (it links this allocator too, so keygate / bare compares the proxies). README,
//! Benchmarks, "The allocator".

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

#[cfg(fuzzing)]
use std::alloc::System as Small;
/// The allocator of ordinary blocks: mimalloc ([`Mi`]); under `cargo fuzz` the system's,
/// which AddressSanitizer watches.
#[cfg(not(fuzzing))]
use Mi as Small;

/// mimalloc, called through its plain `mi_malloc` / `mi_zalloc` / `mi_realloc` for every
/// layout aligned to at most [`MI_MAX_ALIGN`] (all but a few), its aligned calls for the rest.
///
/// Why: the `mimalloc` crate's allocator always calls `mi_malloc_aligned`, and in mimalloc
/// v3 that takes its fast path only for blocks of at most 1 KiB whose page has a free block
/// at hand; otherwise it falls to a generic path which, for a block size that is not a
/// power of two, over-allocates and hands out an interior pointer (the page is then marked
/// so that its frees look the block up). `mi_malloc` needs none of that: mimalloc aligns
/// every block of 16 bytes and more to 16 and smaller ones to 8 (v3 `alloc.c`), so a
/// layout aligned to 16 or less and no larger than its size is always met (test
/// `plain_calls_meet_every_small_alignment`). Measured: callgrind showed 115 allocations a
/// request, with `mi_malloc_aligned` at 5.1 % of the instructions (README, Benchmarks).
#[cfg(not(fuzzing))]
struct Mi;

/// The alignment every mimalloc block of that size or more has (`MI_MAX_ALIGN_SIZE`).
#[cfg(not(fuzzing))]
const MI_MAX_ALIGN: usize = 16;

#[cfg(not(fuzzing))]
impl Mi {
    /// Whether a block of `size` bytes from the plain calls meets `align`.
    fn plain(size: usize, align: usize) -> bool {
        align <= MI_MAX_ALIGN && align <= size
    }
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` and `mi_realloc`
// take blocks from the plain and the aligned calls alike); the plain calls are used only
// where their alignment meets the layout's (`Mi::plain`).
#[cfg(not(fuzzing))]
unsafe impl GlobalAlloc for Mi {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        unsafe {
            match Mi::plain(layout.size(), layout.align()) {
                true => mi::mi_malloc(layout.size()).cast(),
                false => mi::mi_malloc_aligned(layout.size(), layout.align()).cast(),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        unsafe {
            match Mi::plain(layout.size(), layout.align()) {
                true => mi::mi_zalloc(layout.size()).cast(),
                false => mi::mi_zalloc_aligned(layout.size(), layout.align()).cast(),
            }
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, _layout: Layout) {
        unsafe { libmimalloc_sys::mi_free(p.cast()) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        unsafe {
            match Mi::plain(new_size, layout.align()) {
                true => mi::mi_realloc(p.cast(), new_size).cast(),
                false => mi::mi_realloc_aligned(p.cast(), new_size, layout.align()).cast(),
            }
        }
    }
}

/// The size of a transparent huge page on x86-64 and aarch64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

pub struct Allocator;

/// The layout a large block is really allocated with; `None` for ordinary blocks.
fn huge(layout: Layout) -> Option<Layout> {
    // `map_huge` aligns to a huge page, no more: a larger alignment stays with `Small`.
    if layout.size() < HUGE_PAGE || layout.align() > HUGE_PAGE {
        return None;
    }
    let size = layout.size().checked_next_multiple_of(HUGE_PAGE)?;
    Layout::from_size_align(size, layout.align().max(HUGE_PAGE)).ok()
}

/// Map `h.size()` bytes (a multiple of [`HUGE_PAGE`]) at a 2 MiB boundary, zeroed, marked
/// for huge pages: map one huge page more than asked and unmap the misaligned ends.
fn map_huge(h: Layout) -> *mut u8 {
    let len = h.size() + HUGE_PAGE;
    // SAFETY: a fresh private anonymous mapping; only the ranges of it we mapped are
    // unmapped or advised.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        let start = p as usize;
        let head = start.next_multiple_of(HUGE_PAGE) - start;
        if head > 0 {
            libc::munmap(p, head);
        }
        let q = p.cast::<u8>().add(head);
        let tail = len - head - h.size();
        if tail > 0 {
            libc::munmap(q.add(h.size()).cast(), tail);
        }
        if HOT.try_with(Cell::get).unwrap_or(false) {
            libc::madvise(q.cast(), h.size(), libc::MADV_HUGEPAGE);
        }
        q
    }
}

thread_local! {
    /// Set while this thread runs [`hot_tables`].
    static HOT: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with the large blocks this thread maps meanwhile marked for huge pages: for
/// tables read at random on every request (the limiter's counters and sketches, the
/// nonce store's shards), where a few huge pages spare the TLB misses of many small ones.
/// The config's own maps (sites, keys) are not marked although each request looks a key
/// up: they are rebuilt on every reload, where faulting in fresh huge pages costs more than
/// one lookup a request gains. Every other large block stays on ordinary pages: a huge page is zeroed whole when first
/// touched, and on a virtual machine a fresh one is usually memory the host has never
/// backed either. Marking every block of 2 MiB or more made the event list of a
/// 100,000-site YAML file (about 240 MB, written once, read once, freed) cost
/// `keygate check` 2.4–2.7 s, 80 % of it in the kernel clearing pages, against 0.5 s.
pub fn hot_tables<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = HOT.try_with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(HOT.with(|s| s.replace(true)));
    f()
}

/// The alignment a moved mapping keeps: a page (the caller's block may move anywhere).
const PAGE: usize = 4096;

// SAFETY: blocks of the large class (`huge` is a pure function of the caller's layout) are
// mappings of their own, `huge(layout).size()` bytes from the returned pointer, aligned to
// 2 MiB when mapped and at least to a page after a move (callers asking more alignment
// than a page are copied instead of moved); all other blocks are `Small`'s.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match huge(layout) {
            Some(h) => map_huge(h),
            None => unsafe { Small.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match huge(layout) {
            // A fresh anonymous mapping reads as zeros.
            Some(h) => map_huge(h),
            None => unsafe { Small.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        match huge(layout) {
            Some(h) => unsafe {
                libc::munmap(p.cast(), h.size());
            },
            None => unsafe { Small.dealloc(p, layout) },
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        match (huge(layout), huge(new)) {
            (None, None) => return unsafe { Small.realloc(p, layout, new_size) },
            (Some(old), Some(next)) if layout.align() <= PAGE => {
                if old.size() == next.size() {
                    return p;
                }
                // A growing buffer (a YAML event list, a large Vec) moves its pages instead
                // of copying them into new ones.
                // SAFETY: `p` maps `old.size()` bytes (see the impl's contract).
                let q = unsafe {
                    libc::mremap(p.cast(), old.size(), next.size(), libc::MREMAP_MAYMOVE)
                };
                if q == libc::MAP_FAILED {
                    return std::ptr::null_mut();
                }
                return q.cast();
            }
            _ => {}
        }
        // Into or out of the large class: allocate, copy, free.
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

/// Hand freed heap memory back to the kernel. The allocator keeps freed pages for
/// reuse, so the temporary structures of a config load (the YAML tree and the raw
/// config of 10,000 sites: about 10 MB) stayed resident for the life of the process.
/// Called after a config is loaded and installed, on the thread that loaded it.
pub fn release_free_memory() {
    // SAFETY: mi_collect only walks and returns mimalloc's own free pages.
    #[cfg(not(fuzzing))]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

#[cfg(test)]
/// The `VmFlags` of the mapping holding `p`, from /proc/self/smaps.
pub(crate) fn vm_flags(p: *const u8) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let a = p as usize;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&a);
                    continue;
                }
            }
        }
        if inside {
            if let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.to_string();
            }
        }
    }
    panic!("no mapping holds {a:#x}")
}

/// Whether the mapping holding `p` is marked for huge pages (`hg` in its VmFlags).
#[cfg(test)]
pub(crate) fn marked_huge(p: *const u8) -> bool {
    vm_flags(p).split_whitespace().any(|f| f == "hg")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout the plain calls serve gets its alignment, for sizes across mimalloc's
    /// size classes (its small, medium and large pages), as new blocks, zeroed ones and
    /// reallocated ones.
    #[cfg(not(fuzzing))]
    #[test]
    fn plain_calls_meet_every_small_alignment() {
        let mut held = Vec::new();
        for align in [1, 2, 4, 8, 16] {
            for size in (align..70_000).step_by(align * 7 + 3) {
                let layout = Layout::from_size_align(size, align).unwrap();
                assert!(Mi::plain(size, align));
                // SAFETY: a non-zero size; each block is freed below with its layout.
                unsafe {
                    let p = Mi.alloc(layout);
                    let z = Mi.alloc_zeroed(layout);
                    assert!(!p.is_null() && !z.is_null());
                    assert_eq!(p as usize % align, 0, "{size}/{align}");
                    assert_eq!(z as usize % align, 0, "{size}/{align} zeroed");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    let r = Mi.realloc(p, layout, size * 2 + align);
                    assert_eq!(r as usize % align, 0, "{size}/{align} grown");
                    held.push((r, Layout::from_size_align(size * 2 + align, align).unwrap()));
                    held.push((z, layout));
                }
            }
        }
        // Larger alignments take the aligned calls.
        assert!(!Mi::plain(64, 32) && !Mi::plain(8, 16));
        let wide = Layout::from_size_align(100, 64).unwrap();
        // SAFETY: as above.
        unsafe {
            let p = Mi.alloc(wide);
            assert_eq!(p as usize % 64, 0);
            held.push((p, wide));
            for (p, layout) in held {
                Mi.dealloc(p, layout);
            }
        }
    }

    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

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
        // ~24 MB were allocated; the allocator keeps it after `drop`, the collect returns it.
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
        assert!(huge(Layout::from_size_align(8 << 20, 4 << 20).unwrap()).is_none());
        // Through the global allocator: aligned, usable, growable and shrinkable.
        let mut v: Vec<u64> = Vec::with_capacity(HUGE_PAGE / 8);
        assert_eq!(v.as_ptr() as usize % HUGE_PAGE, 0);
        v.extend(0..(HUGE_PAGE / 8) as u64);
        v.push(1);
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(v[9], 9);
    }

    #[test]
    fn only_the_hot_tables_are_marked_for_huge_pages() {
        // `hg` in VmFlags: MADV_HUGEPAGE.
        let mut buffer = vec![1u8; 3 << 20];
        let mut table = hot_tables(|| vec![2u8; 3 << 20]);
        assert!(
            !marked_huge(buffer.as_ptr()),
            "{}",
            vm_flags(buffer.as_ptr())
        );
        assert!(marked_huge(table.as_ptr()));
        // A block keeps its kind as it grows (mremap moves the mapping with its flags).
        buffer.resize(9 << 20, 3);
        table.resize(9 << 20, 4);
        assert!(!marked_huge(buffer.as_ptr()));
        assert!(marked_huge(table.as_ptr()));
        // The thread is back to ordinary pages.
        let after = vec![5u8; 3 << 20];
        assert!(!marked_huge(after.as_ptr()));
    }

    /// A large buffer that grows (moved by `mremap`) and shrinks keeps its contents;
    /// zeroed large blocks read as zeros. (That growth moves rather than copies is
    /// measured, not tested: README, Benchmarks, 100,000 sites.)
    #[test]
    fn large_blocks_keep_their_contents_as_they_grow_and_shrink() {
        let mut v: Vec<u64> = Vec::new();
        for i in 0..(40 << 20) / 8 {
            v.push(i);
        }
        assert!((0..v.len()).step_by(4099).all(|i| v[i] == i as u64));
        assert_eq!(v[v.len() - 1], v.len() as u64 - 1);
        // Down into the large class's smallest size, then out of the class.
        v.truncate(HUGE_PAGE / 8 + 1);
        v.shrink_to_fit();
        assert_eq!(v[HUGE_PAGE / 8], (HUGE_PAGE / 8) as u64);
        v.truncate(100);
        v.shrink_to_fit();
        assert!((0..100).all(|i| v[i] == i as u64));
        let z = vec![0u8; 5 << 20];
        assert!(z.iter().all(|&b| b == 0));
        // Over-aligned large blocks keep their alignment when they grow (copied).
        let l = Layout::from_size_align(HUGE_PAGE, 1 << 16).unwrap();
        unsafe {
            let p = GLOBAL.alloc(l);
            p.write(7);
            let q = GLOBAL.realloc(p, l, 3 * HUGE_PAGE);
            assert_eq!((q as usize % (1 << 16), q.read()), (0, 7));
            GLOBAL.dealloc(q, Layout::from_size_align(3 * HUGE_PAGE, 1 << 16).unwrap());
        }
    }
}
