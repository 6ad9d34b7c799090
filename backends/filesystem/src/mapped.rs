//! Large artifacts served from a read-only mapping of their file.
//!
//! Streaming a file through read buffers costs a hop to the blocking pool and a copy per chunk.
//! A mapping hands hyper slices of the page cache itself: no hop, no copy of our own, and the
//! kernel's readahead keeps ahead of the socket. Concurrent downloads of one file version share a
//! single mapping (the registry below holds it weakly), so a hundred downloads of a 50 MiB
//! artifact map 50 MiB once, not a hundred times.
//!
//! Mappings are only safe where no one truncates a mapped file: a page past the new end faults
//! with SIGBUS. Our writes never truncate (a new version is written aside and renamed over, and a
//! deleted file stays mapped until its last download ends), but on a shared volume another
//! replica, or NFS's handling of a file deleted elsewhere, can; so the backend maps only a store
//! it alone writes (`shared = false`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use externalsource_core::{Bytes, ObjectKey};

use crate::fsops::FileId;

/// One `mmap` of a whole file, unmapped when the last slice of it is dropped.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and private to this value; it is only read through `as_ref`
// and unmapped once, in `drop`, after every reader is gone.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn of(file: &File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map an empty file"));
        }
        // SAFETY: a fresh read-only shared mapping of an open file descriptor; the kernel picks the
        // address. The result is checked before use.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Downloads read front to back: ask for aggressive readahead. Advice only, so a failure
        // changes nothing.
        // SAFETY: `ptr` and `len` are the mapping just made.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        Ok(Self { ptr, len })
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` points at `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `of` mapped, once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Owner handed to `Bytes`: keeps the shared mapping alive while any slice is.
struct Shared(Arc<Mapping>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref().as_ref()
    }
}

/// The live mappings, by key and file version.
pub struct Mappings {
    live: DashMap<ObjectKey, (FileId, Weak<Mapping>)>,
    /// Registry size at which ended downloads are swept out next: twice what survived the last
    /// sweep, so the sweep costs O(1) per request however many downloads are in progress.
    sweep_at: AtomicUsize,
}

/// The smallest registry that is swept.
const MIN_SWEEP: usize = 64;

impl Default for Mappings {
    fn default() -> Self {
        Self { live: DashMap::new(), sweep_at: AtomicUsize::new(MIN_SWEEP) }
    }
}

impl Mappings {
    /// The whole of `file` (version `id`, `len` bytes) as `Bytes` backed by a mapping, reusing
    /// the mapping of a download of the same version still in progress.
    pub fn bytes(&self, key: &ObjectKey, id: FileId, file: &File, len: u64) -> io::Result<Bytes> {
        let len = usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
        let mut slot = self.live.entry(key.clone()).or_insert_with(|| (id, Weak::new()));
        let mapping = match slot.1.upgrade().filter(|m| slot.0 == id && m.len == len) {
            Some(mapping) => mapping,
            None => {
                let mapping = Arc::new(Mapping::of(file, len)?);
                *slot = (id, Arc::downgrade(&mapping));
                mapping
            }
        };
        drop(slot);
        self.forget_unused();
        Ok(Bytes::from_owner(Shared(mapping)))
    }

    /// Drops entries whose downloads all ended, so the registry does not grow with every key
    /// ever served.
    fn forget_unused(&self) {
        if self.live.len() > self.sweep_at.load(Ordering::Relaxed) {
            self.live.retain(|_, (_, weak)| weak.strong_count() > 0);
            self.sweep_at.store((2 * self.live.len()).max(MIN_SWEEP), Ordering::Relaxed);
        }
    }

    /// Mappings alive now (for tests).
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live.iter().filter(|e| e.1.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry keeps no entry for downloads that ended, however many keys were served.
    #[test]
    fn ended_downloads_are_swept_from_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let mappings = Mappings::default();
        for i in 0..(4 * MIN_SWEEP) {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, [i as u8; 16]).unwrap();
            let file = File::open(&path).unwrap();
            let id = FileId::of(&file.metadata().unwrap());
            let key = ObjectKey::parse(&format!("artifacts/ns/n/f{i}")).unwrap();
            let bytes = mappings.bytes(&key, id, &file, 16).unwrap();
            assert_eq!(bytes.as_ref(), &[i as u8; 16]);
            assert!(mappings.live.len() <= MIN_SWEEP + 1, "{} entries after {i} downloads", mappings.live.len());
        }
        assert_eq!(mappings.live(), 0);
    }
}
