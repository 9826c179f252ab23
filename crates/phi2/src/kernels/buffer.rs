//! The engine's own buffers: [`Zeroed`] (f32: [`F32Buffer`]), zeroed buffers whose pages become resident
//! only when written (the KV cache), and [`Aligned`], buffers that start on a cache line and keep
//! their allocation from one use to the next (the kernels' activations and scratch).
//!
//! The KV cache reserves room for its whole context ([`crate::model`]; on Linux, else hundreds
//! of positions ahead), of which a generation may use a few. A `vec![0.0; n]` gives lazily zeroed pages only while glibc serves
//! it with a fresh map; after large blocks have been freed, glibc raises its map threshold and
//! serves the next ones from its heap, zeroing (and so making resident) every byte: measured, a
//! 128-token prompt peaked 44 MB higher that way than with candle's tensors. An anonymous map
//! of its own (Linux) keeps untouched positions out of memory whatever the allocator did before.

use std::ops::{Deref, DerefMut};

/// Values for which every bit pattern, all zeros included, is a valid value (so that a buffer of
/// them may start as a zeroed map): the KV cache's element types.
///
/// # Safety
/// Implement only for plain number types without padding or invalid bit patterns.
pub unsafe trait ZeroBits: Copy + Default + Send + Sync + 'static {}
// SAFETY: f32 and f16 are plain 4- and 2-byte numbers; every bit pattern is one of them.
unsafe impl ZeroBits for f32 {}
unsafe impl ZeroBits for half::f16 {}

/// `len` values, zeroed (an f32 buffer: [`F32Buffer`]).
pub enum Zeroed<T: ZeroBits> {
    Heap(Vec<T>),
    #[cfg(target_os = "linux")]
    Mapped { map: memmap2::MmapMut, len: usize },
}

/// `len` f32 values, zeroed.
pub type F32Buffer = Zeroed<f32>;

impl<T: ZeroBits> Default for Zeroed<T> {
    fn default() -> Self {
        Zeroed::Heap(Vec::new())
    }
}

impl<T: ZeroBits> std::fmt::Debug for Zeroed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if matches!(self, Zeroed::Heap(_)) { "heap" } else { "mapped" };
        write!(f, "Zeroed<{}>({} values, {kind})", std::any::type_name::<T>(), self.len())
    }
}

impl<T: ZeroBits> Zeroed<T> {
    /// `len` zeros: an anonymous map of its own from 64 KB up (Linux), else the heap.
    pub fn zeroed(len: usize) -> Zeroed<T> {
        #[cfg(target_os = "linux")]
        if len * size_of::<T>() >= 64 << 10 {
            if let Ok(map) = memmap2::MmapMut::map_anon(len * size_of::<T>()) {
                return Zeroed::Mapped { map, len };
            }
        }
        Zeroed::Heap(vec![T::default(); len])
    }
}

impl<T: ZeroBits> Zeroed<T> {
    /// `len` zeros in an anonymous map whose pages become resident only when written (Linux),
    /// on 4 KB pages even where transparent huge pages are always on (a 2 MB page would make
    /// 2 MB resident for the first value written into it); `None` where there is no such map.
    /// For reservations far larger than what is usually written: a KV cache's whole context.
    /// Mapped with `MAP_NORESERVE`, so that under Linux's default overcommit policy the unused
    /// part is not counted against the commit limit either. The strict policy
    /// (`vm.overcommit_memory = 2`) ignores that flag and would count the whole reservation
    /// (1.34 GB for an f32 Phi-2 cache, per session): there this returns `None`, and the caller
    /// reserves what it uses as it goes.
    pub fn lazy(len: usize) -> Option<Zeroed<T>> {
        #[cfg(target_os = "linux")]
        if len > 0 && !strict_overcommit() {
            let map = memmap2::MmapOptions::new().len(len.checked_mul(size_of::<T>())?).no_reserve_swap().map_anon().ok()?;
            let _ = map.advise(memmap2::Advice::NoHugePage);
            return Some(Zeroed::Mapped { map, len });
        }
        let _ = len;
        None
    }
}

/// Whether Linux counts every writable private map against the commit limit in full
/// (`vm.overcommit_memory = 2`), read once.
#[cfg(target_os = "linux")]
pub(crate) fn strict_overcommit() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|s| overcommit_is_strict(&s)))
}

/// `/proc/sys/vm/overcommit_memory`'s contents name the strict policy (2; 0 is the heuristic
/// default, 1 always overcommits).
#[cfg(any(target_os = "linux", test))]
fn overcommit_is_strict(contents: &str) -> bool {
    contents.trim() == "2"
}

impl<T: ZeroBits> Deref for Zeroed<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Zeroed::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Zeroed::Mapped { map, len } => {
                // SAFETY: the map holds `size_of::<T>() · len` bytes, is page (so T-) aligned,
                // and any bits are a valid T (`ZeroBits`).
                unsafe { std::slice::from_raw_parts(map.as_ptr() as *const T, *len) }
            }
        }
    }
}

impl<T: ZeroBits> DerefMut for Zeroed<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Zeroed::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Zeroed::Mapped { map, len } => {
                // SAFETY: as in `deref`, and the map is borrowed mutably.
                unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr() as *mut T, *len) }
            }
        }
    }
}

/// A buffer of `len` values starting on a 64-byte boundary, so that a 64-byte vector or tile
/// row read from it never straddles two cache lines (a `Vec` of bytes or f32 is aligned to its
/// element only; measured on the AMX kernel's buffers, 16 bytes off a line: every activation
/// tile row and epilogue accumulator touched two lines).
#[derive(Debug, Default)]
pub struct Aligned<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

impl<T> Aligned<T> {
    pub const fn new() -> Self {
        Aligned { buf: Vec::new(), off: 0, len: 0 }
    }
}

impl<T: Copy + Default> Aligned<T> {
    /// Values allocated past `len` so that the first can start on a 64-byte boundary.
    const SLACK: usize = 64 / if std::mem::size_of::<T>() == 0 { 1 } else { std::mem::size_of::<T>() };

    /// `n` values, all `T::default()` (zeros).
    pub fn resize_zeroed(&mut self, n: usize) {
        self.buf.clear();
        self.buf.resize(n + Self::SLACK, T::default());
        self.off = self.buf.as_ptr().align_offset(64).min(Self::SLACK);
        self.len = n;
    }

    /// `n` values, for a buffer the caller overwrites in full: the allocation is kept when it
    /// holds them (its contents are whatever an earlier use left), else replaced by zeros. The
    /// activation buffers alternate between widths (2560 and 10240 columns in Phi-2); zeroing
    /// each regrowth measured ~1% of a 128-token prompt's samples, on the calling thread while
    /// the others waited.
    pub fn resize(&mut self, n: usize) {
        if self.buf.len() >= n + Self::SLACK {
            self.len = n;
        } else {
            self.resize_zeroed(n);
        }
    }

    /// Length 0, the allocation kept.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

// Unchecked views: every method above keeps `off + len <= buf.len()` (`off` is at most
// `SLACK` and the allocation holds `len + SLACK` values). A checked slice here put a bounds
// check and its panic branch inside every kernel loop that reads an activation buffer, and
// with them LLVM scheduled the one-token Q4_0 loop's prefetches in one burst at the top of
// each iteration: `stream_bench` on Phi-2-shaped Q4_0 measured 26.3 -> 21.7 GB/s when an
// unrelated change shifted that choice.
impl<T> Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        debug_assert!(self.off + self.len <= self.buf.len());
        // SAFETY: in bounds by the invariant above; the values are initialized (`Vec` elements).
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().add(self.off), self.len) }
    }
}

impl<T> DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        debug_assert!(self.off + self.len <= self.buf.len());
        // SAFETY: as in `deref`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().add(self.off), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::{overcommit_is_strict, Aligned, F32Buffer};

    #[test]
    fn only_the_strict_overcommit_policy_is_strict() {
        assert!(overcommit_is_strict("2\n"));
        for other in ["0\n", "1\n", "", "22\n"] {
            assert!(!overcommit_is_strict(other), "{other:?}");
        }
    }

    #[test]
    fn aligned_buffers_start_on_a_line_are_zeroed_when_new_and_keep_their_allocation() {
        fn check<T: Copy + Default + PartialEq + std::fmt::Debug>(b: &mut Aligned<T>, n: usize) {
            b.resize_zeroed(n);
            assert_eq!(b.len(), n);
            assert_eq!(b.as_ptr() as usize % 64, 0, "{n} values");
            assert!(b.iter().all(|v| *v == T::default()));
        }
        let (mut a, mut b, mut c) = (Aligned::<i8>::new(), Aligned::<i16>::new(), Aligned::<f32>::new());
        for n in [0, 1, 63, 64, 1000, 1 << 20] {
            check(&mut a, n);
            check(&mut b, n);
            check(&mut c, n);
            c.iter_mut().for_each(|v| *v = 1.0);
        }
        // Shorter and back: the allocation (and what was written) kept, still aligned.
        let at = c.as_ptr();
        c.resize(7);
        c.clear();
        c.resize(1 << 20);
        assert!(c.iter().all(|&v| v == 1.0) && c.as_ptr() == at);
        // Longer than the allocation: a new one, zeroed and aligned.
        c.resize((1 << 20) + 100);
        assert!(c.iter().all(|&v| v == 0.0) && c.as_ptr() as usize % 64 == 0);
    }

    #[test]
    fn small_and_large_buffers_are_zeroed_and_writable() {
        for len in [0, 5, 1 << 20, (1 << 19) + 3] {
            let mut b = F32Buffer::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&v| v == 0.0));
            if len > 0 {
                b[len - 1] = 1.5;
                assert_eq!(b[len - 1], 1.5);
            }
        }
    }
}

