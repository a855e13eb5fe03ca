//! Output buffers kept between batches (issue #8, csv's "amortizing allocations").
//!
//! A batch encodes each data output into a buffer of its own (about 1.5 times the batch's input
//! bytes for the encrypted output), which the writer hands to the output's [`ObjectWriter`] as
//! [`Bytes`]. Allocated per batch, every buffer was new memory: the allocator returns freed pages
//! to the kernel after a while (jemalloc's decay, `cli/src/main.rs`), so the encoder faulted
//! them in again, page by page — 56 % of a job's page faults (`perf record -e page-faults`, A at
//! 1M rows). Here a buffer comes back to its output's pool when the writer is done with it
//! (when the last [`Bytes`] of it is dropped), and the next batch encodes into it.
//!
//! Measured (`cargo xtask bench`'s jobs, interleaved with the binary before, medians): at 1M
//! rows, B's page faults 69k → 49k, its time 1.48 → 1.37 s and its CPU 2.47 → 2.28 s (4 runs),
//! A p2 within the noise (faults 48k → 38k); at 10M rows (2 runs), A p2 17.4 → 15.9 s, B 20.7
//! → 18.7 s, A p1 unchanged. The price is peak RSS: the kept buffers stay mapped between
//! batches, ~3 MB more for A and ~9 MB for B (four pooled outputs) at 1M rows.
//!
//! The keys export's buffers hold data keys in clear: their pool zeroizes each buffer it takes
//! back (before, a written buffer went back to the allocator as it was).
//!
//! [`ObjectWriter`]: crate::connector::ObjectWriter

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use zeroize::Zeroize;

use crate::record::RecordBatch;

/// Up to `keep` values kept for reuse between batches (buffers that have grown once), shared by
/// the threads that take and give them back.
pub(crate) struct Kept<T> {
    kept: Mutex<Vec<T>>,
    keep: usize,
}

impl<T> Kept<T> {
    /// Keeps at most `keep` values.
    pub(crate) fn new(keep: usize) -> Self {
        Kept {
            kept: Mutex::new(Vec::new()),
            keep,
        }
    }

    /// A kept value, if there is one.
    pub(crate) fn take(&self) -> Option<T> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keeps `value` if fewer than `keep` are kept; else drops it.
    pub(crate) fn put(&self, value: T) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < self.keep {
            kept.push(value);
        }
    }
}

/// Record batches kept between batches, with the buffers they grew: a batch is given back
/// emptied, and a new one is made only when none is kept.
pub(crate) struct Batches {
    kept: Kept<RecordBatch>,
    n_slots: usize,
}

impl Batches {
    /// Keeps at most `keep` batches of `n_slots` value slots.
    pub(crate) fn new(keep: usize, n_slots: usize) -> Self {
        Batches {
            kept: Kept::new(keep),
            n_slots,
        }
    }

    /// An empty batch: a kept one when there is one.
    pub(crate) fn take(&self) -> RecordBatch {
        self.kept
            .take()
            .unwrap_or_else(|| RecordBatch::new(self.n_slots))
    }

    /// Empties `batch` and keeps it for [`Batches::take`], if there is room.
    pub(crate) fn put(&self, mut batch: RecordBatch) {
        batch.clear();
        self.kept.put(batch);
    }
}

/// One pool per output of a job ([`OutputBuffers::new`]); an output that is not pooled gets a
/// new buffer every time.
pub(crate) struct OutputBuffers {
    pools: Vec<Option<Arc<Pool>>>,
}

/// Whether an output's buffers are kept, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooling {
    /// A new buffer for every batch.
    No,
    /// Kept, emptied.
    Kept,
    /// Kept, zeroized first (they held secrets).
    Zeroized,
}

/// Buffers of one output, with their capacity (at most as many as can be in flight at once).
struct Pool {
    kept: Kept<Vec<u8>>,
    zeroize: bool,
}

impl Pool {
    /// Keeps `buf` if there is room; zeroized first when the pool says so (also when it is not
    /// kept). A kept buffer keeps its length until [`OutputBuffers::take`] empties it.
    fn put(&self, mut buf: Vec<u8>) {
        if self.zeroize {
            buf.as_mut_slice().zeroize();
        }
        self.kept.put(buf);
    }
}

/// A pooled buffer as the owner of [`Bytes`]: back to its pool when dropped.
struct Returning {
    buf: Vec<u8>,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

impl OutputBuffers {
    /// A pool for each output, as `pooling` says, keeping up to `keep` buffers each.
    pub(crate) fn new(pooling: impl IntoIterator<Item = Pooling>, keep: usize) -> Self {
        OutputBuffers {
            pools: pooling
                .into_iter()
                .map(|p| {
                    (p != Pooling::No).then(|| {
                        Arc::new(Pool {
                            kept: Kept::new(keep),
                            zeroize: p == Pooling::Zeroized,
                        })
                    })
                })
                .collect(),
        }
    }

    /// An empty buffer for output `i`: a kept one (with its capacity) when there is one.
    pub(crate) fn take(&self, i: usize) -> Vec<u8> {
        self.pools
            .get(i)
            .and_then(Option::as_ref)
            .and_then(|p| p.kept.take())
            .map(|mut buf| {
                buf.clear();
                buf
            })
            .unwrap_or_default()
    }

    /// `buf`, filled for output `i`, as [`Bytes`] that give it back to the output's pool once
    /// dropped.
    pub(crate) fn bytes(&self, i: usize, buf: Vec<u8>) -> Bytes {
        match self.pools.get(i).and_then(Option::as_ref) {
            Some(pool) => Bytes::from_owner(Returning {
                buf,
                pool: pool.clone(),
            }),
            None => Bytes::from(buf),
        }
    }

    #[cfg(test)]
    fn kept(&self, i: usize) -> usize {
        self.pools[i]
            .as_ref()
            .map_or(0, |p| p.kept.kept.lock().expect("poisoned").len())
    }

    /// Whether output `i`'s kept buffers hold bytes, all zero.
    #[cfg(test)]
    fn kept_zeroed(&self, i: usize) -> bool {
        let pool = self.pools[i].as_ref().expect("pooled");
        let kept = pool.kept.kept.lock().expect("poisoned");
        kept.iter()
            .all(|b| !b.is_empty() && b.iter().all(|&x| x == 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_buffer_comes_back_empty_with_its_capacity() {
        let pools = OutputBuffers::new([Pooling::Kept, Pooling::No], 2);
        let mut buf = pools.take(0);
        assert_eq!(buf.capacity(), 0, "nothing kept yet");
        buf.extend_from_slice(&[7; 1000]);
        let cap = buf.capacity();
        let bytes = pools.bytes(0, buf);
        assert_eq!(&bytes[..], &[7; 1000][..], "the bytes are the buffer's");
        let half = bytes.slice(500..);
        drop(bytes);
        assert_eq!(pools.kept(0), 0, "still in use while a slice of it lives");
        drop(half);
        assert_eq!(pools.kept(0), 1);
        let again = pools.take(0);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), cap);
        assert_eq!(pools.kept(0), 0);
    }

    #[test]
    fn unpooled_outputs_and_full_pools_keep_nothing() {
        let pools = OutputBuffers::new([Pooling::Kept, Pooling::No], 2);
        drop(pools.bytes(1, vec![1; 10]));
        assert_eq!(pools.kept(1), 0);
        assert_eq!(pools.take(1).capacity(), 0);
        for _ in 0..3 {
            drop(pools.bytes(0, vec![1; 10]));
        }
        assert_eq!(pools.kept(0), 2, "at most `keep`");
        // an output the job does not have
        assert_eq!(pools.take(9).capacity(), 0);
    }

    #[test]
    fn a_pool_of_secrets_zeroizes_what_it_takes_back() {
        let pools = OutputBuffers::new([Pooling::Zeroized, Pooling::Kept], 2);
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(b"a data key in clear");
        drop(pools.bytes(0, buf));
        assert_eq!(pools.kept(0), 1);
        assert!(pools.kept_zeroed(0));
        // the other kind keeps what it held: the check above can fail
        drop(pools.bytes(1, b"not secret".to_vec()));
        assert!(!pools.kept_zeroed(1));
    }
}
