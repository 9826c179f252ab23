//! Zeroed f32 buffers that large kernels stream through, on 2 MB pages where Linux gives them.
//!
//! The KV cache is read in full by every decode step (at a few hundred positions, tens of MB per
//! step, like a weight matrix, see [`super::attention`]). On 4 KB pages that read pays what the
//! weights paid before they were mapped on 2 MB pages ([`crate::storage`]): the hardware
//! prefetchers stop at every 4 KB boundary and each page costs a TLB entry. So buffers of at least
//! one huge page come from an anonymous map, 2 MB aligned, with `MADV_HUGEPAGE` (a hint: without
//! it, or elsewhere, they are plain memory and work the same).

use std::ops::{Deref, DerefMut};

const HUGE: usize = 2 << 20;

/// `len` f32 values, zeroed.
pub enum F32Buffer {
    Heap(Vec<f32>),
    #[cfg(target_os = "linux")]
    Mapped { map: memmap2::MmapMut, offset: usize, len: usize },
}

impl Default for F32Buffer {
    fn default() -> Self {
        F32Buffer::Heap(Vec::new())
    }
}

impl std::fmt::Debug for F32Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if matches!(self, F32Buffer::Heap(_)) { "heap" } else { "2 MB pages" };
        write!(f, "F32Buffer({} values, {kind})", self.len())
    }
}

impl F32Buffer {
    /// `len` zeros: on 2 MB pages when that is at least one page and the map succeeds.
    pub fn zeroed(len: usize) -> F32Buffer {
        #[cfg(target_os = "linux")]
        if len * 4 >= HUGE {
            // One page of slack to start on a 2 MB boundary; anonymous maps are zero-filled.
            let bytes = (len * 4).next_multiple_of(HUGE) + HUGE;
            if let Ok(map) = memmap2::MmapMut::map_anon(bytes) {
                let _ = map.advise(memmap2::Advice::HugePage);
                let offset = (HUGE - map.as_ptr() as usize % HUGE) % HUGE;
                return F32Buffer::Mapped { map, offset, len };
            }
        }
        F32Buffer::Heap(vec![0f32; len])
    }
}

impl Deref for F32Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            F32Buffer::Heap(v) => v,
            #[cfg(target_os = "linux")]
            F32Buffer::Mapped { map, offset, len } => {
                // SAFETY: `offset + 4 · len` bytes lie inside the map (sized for it), the start
                // is 2 MB (so 4-byte) aligned, and any bits are a valid f32.
                unsafe { std::slice::from_raw_parts(map.as_ptr().add(*offset) as *const f32, *len) }
            }
        }
    }
}

impl DerefMut for F32Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            F32Buffer::Heap(v) => v,
            #[cfg(target_os = "linux")]
            F32Buffer::Mapped { map, offset, len } => {
                // SAFETY: as in `deref`, and the map is borrowed mutably.
                unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().add(*offset) as *mut f32, *len) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::F32Buffer;

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
