use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use codeq::Encode;

use crate::ChunkId;
use crate::Config;
use crate::chunk::Chunk;
use crate::types::Segment;

#[derive(Debug)]
pub(crate) struct OpenChunk<Rec> {
    pending_data: Vec<u8>,
    pub(crate) chunk: Chunk<Rec>,
}

impl<Rec> OpenChunk<Rec> {
    /// Creates a new open chunk from an existing chunk.
    pub(crate) fn new(chunk: Chunk<Rec>) -> Self {
        Self {
            pending_data: Vec::new(),
            chunk,
        }
    }

    /// Hands the encoded pending records to the caller.
    ///
    /// The replacement buffer keeps the capacity the previous one reached, so
    /// a steady batch size stops re-growing the buffer on every flush.
    pub(crate) fn take_pending_data(&mut self) -> Vec<u8> {
        let capacity = self.pending_data.capacity();
        let replacement = Vec::with_capacity(capacity);
        std::mem::replace(&mut self.pending_data, replacement)
    }
}

impl<Rec> OpenChunk<Rec>
where Rec: Encode
{
    pub(crate) fn create_empty(
        config: Arc<Config>,
        chunk_id: ChunkId,
    ) -> Result<Self, io::Error> {
        let f = Self::create_file(config.clone(), chunk_id)?;

        let open = Self::from_file(chunk_id, f)?;

        Ok(open)
    }

    pub(crate) fn from_file(
        chunk_id: ChunkId,
        f: Arc<File>,
    ) -> Result<Self, io::Error> {
        let record_offsets = vec![*chunk_id];

        let chunk = Chunk {
            f,
            global_offsets: record_offsets,
            truncated: None,
            _p: Default::default(),
        };

        let open = Self {
            pending_data: Vec::new(),
            chunk,
        };

        Ok(open)
    }

    /// Create a new open chunk and append an initial record to it.
    /// But does not fsync it.
    pub(crate) fn create_with_initial_record(
        config: Arc<Config>,
        chunk_id: ChunkId,
        initial_record: Rec,
    ) -> Result<Self, io::Error> {
        let mut open = Self::create_empty(config, chunk_id)?;

        open.append_record(&initial_record)?;
        open.chunk.f.write_all_at(&open.pending_data, 0)?;
        open.pending_data.clear();

        Ok(open)
    }

    pub(crate) fn create_file(
        config: Arc<Config>,
        chunk_id: ChunkId,
    ) -> Result<Arc<File>, io::Error> {
        let path = config.chunk_path(chunk_id);
        // Not append mode: a preallocated file is longer than its records.
        // Every write is positional, right after the last record (the flush
        // worker knows where from the write's `upto_offset`).
        let f = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(path)?;

        if config.preallocate() {
            Self::preallocate(&f, config.chunk_max_size())?;
        }

        // Commit the new file name before any of its records can be
        // acknowledged as durable.
        config.sync_dir()?;

        Ok(Arc::new(f))
    }

    /// Allocates `len` bytes for `f` (its length included), so that writes
    /// inside it need no file system metadata committed by `fdatasync`; when
    /// that fails, the file is left to grow as it is written.
    #[cfg(target_os = "linux")]
    fn preallocate(f: &File, len: usize) -> Result<(), io::Error> {
        use std::os::fd::AsRawFd;

        let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
        // SAFETY: fallocate(2) on a descriptor that `f` keeps open for the
        // call; no memory is passed.
        let res = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) };
        if res == 0 {
            return Ok(());
        }
        // The file system cannot (`EOPNOTSUPP`) or has no room for the whole
        // chunk (`ENOSPC`): the file grows as records are written, as without
        // this, and each sync also commits the new length. Writes that do not
        // fit fail then, where they would have anyway.
        let err = io::Error::last_os_error();
        log::warn!("cannot allocate a {len}-byte WAL chunk up front: {err}");
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn preallocate(_f: &File, _len: usize) -> Result<(), io::Error> {
        Ok(())
    }

    pub(crate) fn append_record(
        &mut self,
        rec: &Rec,
    ) -> Result<Segment, io::Error> {
        let size = rec.encode(&mut self.pending_data)?;

        self.chunk.append_record_size(size as u64);

        Ok(self.chunk.last_segment())
    }
}
