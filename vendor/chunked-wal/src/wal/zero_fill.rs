//! rota's addition: zeros written over a preallocated chunk's free tail, in
//! the background.
//!
//! `fallocate(2)` leaves the blocks it allocates "unwritten" (ext4, xfs): the
//! first write into one converts its extent, and the `fdatasync` after it
//! must then commit that change too (on ext4 without a journal, a
//! synchronous inode write). On this machine a 3 KB write + `fdatasync`
//! took p50 0.10–0.14 ms inside zeros written earlier vs 0.14–0.20 ms inside
//! `fallocate`d space. PostgreSQL fills its WAL segments with zeros for the
//! same reason.
//!
//! A thread per chunk writes the zeros from the chunk's end downwards and
//! stops short of the flush worker's writes. The two never write the same
//! bytes: the flush worker claims the range of each write under
//! [`ZeroFill::claim`]'s lock before writing it, and the thread writes a
//! block only while holding that lock and only above everything claimed.
//! Zeros over zeros change nothing a reader or the recovery can see, so a
//! crash at any point leaves the chunk as `fallocate` did.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

/// Bytes written per lock hold: short enough that a flush waits a few
/// microseconds at most for a block in progress.
const BLOCK: u64 = 64 << 10;

/// Left unfilled above the flush worker's last write: its next writes land
/// there soon, and zeros written there would only be overwritten.
const MARGIN: u64 = 4 << 20;

/// Synced every this many bytes, so that the flush worker's `fdatasync` does
/// not carry the zeros.
const SYNC_EVERY: u64 = 8 << 20;

/// The fence between the flush worker's writes and the zeros.
#[derive(Debug)]
pub(crate) struct ZeroFill {
    fence: Mutex<Fence>,
}

/// Held by a write in progress (see [`ZeroFill::claim`]).
#[derive(Debug)]
pub(crate) struct Fence {
    /// No zeros are written below this (chunk-local) offset: the flush
    /// worker has written, or is writing, up to it.
    claimed: u64,
    stopped: bool,
}

impl ZeroFill {
    /// Starts filling `f` (a chunk file `len` bytes long, whose records end at
    /// `claimed`) with zeros from its end down, on a thread of its own.
    pub(crate) fn start(f: Arc<File>, len: u64, claimed: u64) -> Arc<ZeroFill> {
        let fill = Arc::new(ZeroFill {
            fence: Mutex::new(Fence {
                claimed,
                stopped: false,
            }),
        });
        let worker = fill.clone();
        let spawned = std::thread::Builder::new()
            .name("chunked_wal_zero".to_string())
            .spawn(move || {
                if let Err(err) = worker.fill(&f, len) {
                    // Nothing is lost: the rest stays allocated-but-unwritten,
                    // which reads as zeros too; only its syncs are slower.
                    log::warn!("writing zeros ahead of the WAL stopped: {err}");
                }
            });
        if let Err(err) = spawned {
            log::warn!("cannot start writing zeros ahead of the WAL: {err}");
        }
        fill
    }

    /// Claims `[.., end)` for a write by the flush worker: the returned guard
    /// must be held until that write returned.
    pub(crate) fn claim(&self, end: u64) -> MutexGuard<'_, Fence> {
        let mut fence = self.fence();
        fence.claimed = fence.claimed.max(end);
        fence
    }

    /// Stops the filling before the file is cut or removed; returns after the
    /// block in progress, if any, was written.
    pub(crate) fn stop(&self) {
        self.fence().stopped = true;
    }

    fn fence(&self) -> MutexGuard<'_, Fence> {
        self.fence.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fill(&self, f: &File, len: u64) -> Result<(), io::Error> {
        let zeros = vec![0u8; BLOCK as usize];
        let mut high = len;
        let mut unsynced = 0;
        loop {
            let low = high.saturating_sub(BLOCK);
            {
                let fence = self.fence();
                if fence.stopped || low < fence.claimed.saturating_add(MARGIN) {
                    break;
                }
                f.write_all_at(&zeros[..(high - low) as usize], low)?;
            }
            high = low;
            unsynced += BLOCK;
            if unsynced >= SYNC_EVERY {
                f.sync_data()?;
                unsynced = 0;
            }
        }
        if unsynced > 0 {
            f.sync_data()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    use std::time::Duration;
    use std::time::Instant;

    use super::*;

    /// The bytes of `f` in allocated-but-unwritten extents (FIEMAP), or `None`
    /// where the file system cannot say.
    fn unwritten_bytes(f: &File) -> Option<u64> {
        use std::os::fd::AsRawFd;

        #[repr(C)]
        struct Extent {
            logical: u64,
            physical: u64,
            length: u64,
            reserved64: [u64; 2],
            flags: u32,
            reserved: [u32; 3],
        }
        #[repr(C)]
        struct Fiemap {
            start: u64,
            length: u64,
            flags: u32,
            mapped_extents: u32,
            extent_count: u32,
            reserved: u32,
            extents: [Extent; 256],
        }
        const FS_IOC_FIEMAP: libc::c_ulong = 0xC020660B;
        const FIEMAP_FLAG_SYNC: u32 = 1;
        const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;

        // SAFETY: plain old data, all zeros is valid.
        let mut map: Box<Fiemap> = Box::new(unsafe { std::mem::zeroed() });
        map.length = u64::MAX;
        map.flags = FIEMAP_FLAG_SYNC;
        map.extent_count = 256;
        // SAFETY: FS_IOC_FIEMAP with a map sized for `extent_count` extents.
        let res = unsafe {
            libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, &mut *map as *mut Fiemap)
        };
        if res != 0 {
            return None;
        }
        let n = map.mapped_extents as usize;
        Some(
            map.extents[..n]
                .iter()
                .filter(|e| e.flags & FIEMAP_EXTENT_UNWRITTEN != 0)
                .map(|e| e.length)
                .sum(),
        )
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn fills_the_tail_above_the_claims_and_never_a_claimed_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk");
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap(),
        );
        let len: u64 = 16 << 20;
        // SAFETY: fallocate on an open descriptor, no memory passed.
        let allocated = unsafe {
            libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&*f), 0, 0, len as i64)
        };
        f.write_all_at(&[7u8; 100], 0).unwrap();

        let fill = ZeroFill::start(f.clone(), len, 100);
        // The "flush worker" writes records while the zeros are written.
        let mut end = 100u64;
        for i in 0..2000u64 {
            let record = [(i % 251) as u8 + 1; 1000];
            let _claim = fill.claim(end + record.len() as u64);
            f.write_all_at(&record, end).unwrap();
            end += record.len() as u64;
        }

        let mut read = vec![0u8; end as usize];
        f.read_exact_at(&mut read, 0).unwrap();
        assert!(read[..100].iter().all(|b| *b == 7));
        for (i, record) in read[100..].chunks(1000).enumerate() {
            let want = (i as u64 % 251) as u8 + 1;
            assert!(record.iter().all(|b| *b == want), "record {i} was overwritten");
        }

        if allocated == 0 && unwritten_bytes(&f).is_some() {
            // Everything above the claims and the margin gets written.
            wait_until("the zeros", || {
                unwritten_bytes(&f).unwrap() <= end + MARGIN + BLOCK
            });
        }
        let mut tail = vec![1u8; (len - end) as usize];
        f.read_exact_at(&mut tail, end).unwrap();
        assert!(tail.iter().all(|b| *b == 0));
    }

    #[test]
    fn stops_when_told_and_writes_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk");
        let f = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap(),
        );
        let len: u64 = 64 << 20;
        f.set_len(len).unwrap();
        let fill = ZeroFill::start(f.clone(), len, 0);
        fill.stop();
        // Cut the file as the flush worker does at a rollover; nothing may
        // grow it back.
        f.set_len(10).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(f.metadata().unwrap().len(), 10);
    }
}
