//! The process allocator: mimalloc, told to keep the memory it frees.
//!
//! Image pipelines allocate and free several large buffers per image; with glibc's allocator
//! each became fresh mmap'd pages (page faults, zeroing) and loading ran 1.7x slower (measured
//! on the grocery photos). mimalloc reuses them — but by default it still hands freed memory
//! back to the OS after a short delay, and a model's activations (tens of MB each, allocated
//! and freed by every layer) then come back as fresh pages: a Lite0 train step at batch 32 on
//! flex took 122,000 page faults and 18 s of kernel time over 6 passes, and its forward ran on
//! about one core. With purging off the same passes take 2,000 faults; `bench train` (Lite0,
//! flex) went from 5.1 to 8.2 img/s and `bench embed` from 20.3 to 26.8 img/s on this 2-core
//! machine. The cost: the process keeps its peak memory until it exits, as PyTorch's caching
//! allocator does. `MIMALLOC_PURGE_DELAY` in the environment still wins.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, v3): milliseconds before freed memory is
/// returned to the OS; -1 never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Turns off returning freed memory to the OS, unless the user set `MIMALLOC_PURGE_DELAY`.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; mimalloc allows this at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
