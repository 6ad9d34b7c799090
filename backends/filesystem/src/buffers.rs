//! Reusable read buffers for downloads streamed from disk.
//!
//! A download that is not served from a mapping (a shared store, see `mapped`) is read in
//! chunks. A fresh buffer per chunk costs an allocation and zeroing it, and above the
//! allocator's mmap threshold an `mmap` and `munmap` as well: per chunk, per download. Here a
//! chunk's buffer goes back to a free list when hyper drops the last slice of it, so a steady
//! stream of downloads reads into the same few buffers, which lets chunks be large (fewer hops
//! to the blocking pool) without paying for the size on every read.

use std::sync::{Arc, Mutex, PoisonError};

use externalsource_core::Bytes;

/// Buffers of one size, at most `keep` of them held while idle.
pub struct ReadBuffers {
    free: Mutex<Vec<Box<[u8]>>>,
    size: usize,
    keep: usize,
}

impl ReadBuffers {
    pub fn new(size: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self { free: Mutex::new(Vec::with_capacity(keep)), size, keep })
    }

    /// The size of every buffer.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes held by idle buffers: at most `size × keep`.
    #[cfg(test)]
    pub fn idle_bytes(&self) -> usize {
        self.lock().len() * self.size
    }

    /// A buffer of `size` bytes, reused if one is idle. Its content is whatever was read into it
    /// last: callers fill what they hand on.
    pub fn take(self: &Arc<Self>) -> ReadBuffer {
        let buf = self.lock().pop().unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice());
        ReadBuffer { buf, len: 0, home: self.clone() }
    }

    fn give_back(&self, buf: Box<[u8]>) {
        let mut free = self.lock();
        if free.len() < self.keep {
            free.push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<[u8]>>> {
        // The list is valid whatever a panicking holder did: it only pushes and pops.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A buffer on loan from [`ReadBuffers`]; returned when dropped, or when the last `Bytes` made
/// from it by [`ReadBuffer::into_bytes`] is.
pub struct ReadBuffer {
    buf: Box<[u8]>,
    len: usize,
    home: Arc<ReadBuffers>,
}

impl ReadBuffer {
    /// The whole buffer, to read into.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// The first `len` bytes (at most the buffer's size) as `Bytes`, without a copy.
    pub fn into_bytes(mut self, len: usize) -> Bytes {
        self.len = len.min(self.buf.len());
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ReadBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_slice_is_dropped_and_is_reused() {
        let pool = ReadBuffers::new(8, 2);
        let mut b = pool.take();
        b.space()[..3].copy_from_slice(b"abc");
        let first = b.space().as_ptr();
        let bytes = b.into_bytes(3);
        let slice = bytes.slice(1..);
        assert_eq!(&bytes[..], b"abc");
        drop(bytes);
        assert_eq!(pool.idle_bytes(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], b"bc");
        drop(slice);
        assert_eq!(pool.idle_bytes(), 8);
        let mut again = pool.take();
        assert_eq!(again.space().as_ptr(), first, "the same allocation, reused");
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn idle_buffers_are_bounded() {
        let pool = ReadBuffers::new(4, 2);
        let loans: Vec<_> = (0..5).map(|_| pool.take()).collect();
        drop(loans);
        assert_eq!(pool.idle_bytes(), 2 * 4, "three of five were freed, not kept");
        let lens: Vec<_> = (0..3).map(|_| pool.take().into_bytes(9).len()).collect();
        assert_eq!(lens, [4, 4, 4], "a length past the buffer is cut to its size");
    }
}
