//! Encoders kept between batches (issue #8, csv's "amortizing allocations"), for batch jobs
//! ([`crate::engine`]) and streams ([`crate::stream_job`]) alike.

use std::sync::Arc;

use crate::error::Result;
use crate::format::{Format, Layout};
use crate::privacy::PrivacyPlan;

/// Encoders kept between batches (issue #8, csv's "amortizing allocations"): an encoder is built
/// once per output and layout, not per batch. Encoding takes `&mut self`, so each worker takes
/// a whole [`EncoderSet`], encodes its batch with it and puts it back; as many sets exist as
/// workers encode at once (at most `parallelism`, the CPU permits), and at most `keep` are kept.
pub(crate) struct EncoderPool {
    sets: std::sync::Mutex<Vec<EncoderSet>>,
    keep: usize,
}

/// One encoder per output of a job, for one input layout; each is built when first needed
/// ([`EncoderSet::get`]): the keys export needs none, and an output that gets no rows never
/// builds one.
pub(crate) struct EncoderSet {
    layout: Arc<Layout>,
    by_output: Vec<Option<Box<dyn crate::format::Encoder>>>,
}

impl EncoderPool {
    pub(crate) fn new(keep: usize) -> Self {
        EncoderPool {
            sets: std::sync::Mutex::new(Vec::new()),
            keep: keep.max(1),
        }
    }

    /// A set for `layout` and `outputs` outputs: a kept one when there is one, else a new
    /// (empty) one.
    pub(crate) fn take(&self, layout: &Arc<Layout>, outputs: usize) -> EncoderSet {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        match sets
            .iter()
            .position(|s| Arc::ptr_eq(&s.layout, layout) || *s.layout == **layout)
        {
            Some(i) => sets.swap_remove(i),
            None => EncoderSet {
                layout: layout.clone(),
                by_output: (0..outputs).map(|_| None).collect(),
            },
        }
    }

    /// Keeps `set` for the next batch.
    pub(crate) fn put(&self, set: EncoderSet) {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if sets.len() < self.keep {
            sets.push(set);
        }
    }
}

impl EncoderSet {
    /// Output `i`'s encoder, in `format`, built on first use (for `plan`'s fields and
    /// contract).
    pub(crate) fn get(
        &mut self,
        i: usize,
        format: &dyn Format,
        plan: &PrivacyPlan,
    ) -> Result<&mut dyn crate::format::Encoder> {
        self.get_with(i, format, plan.field_plan(), plan.contract_ref())
    }

    pub(crate) fn get_with(
        &mut self,
        i: usize,
        format: &dyn Format,
        fields: &crate::record::FieldPlan,
        contract_ref: &str,
    ) -> Result<&mut dyn crate::format::Encoder> {
        let slot = &mut self.by_output[i];
        let enc = match slot {
            Some(e) => e,
            None => slot.insert(format.encoder(fields, &self.layout, contract_ref)?),
        };
        Ok(enc.as_mut())
    }
}

impl std::fmt::Debug for EncoderPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderPool")
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::format::{Decoder, Encoder};
    use crate::record::{FieldPlan, OutputRows, RecordBatch};

    /// A format that counts the encoders it builds; each encoder writes its own number.
    #[derive(Debug, Default)]
    struct Counting {
        built: AtomicUsize,
    }

    struct Numbered(u8);

    impl Encoder for Numbered {
        fn begin(&mut self, _: &mut Vec<u8>) -> Result<()> {
            Ok(())
        }
        fn encode(&mut self, _: &RecordBatch, _: &OutputRows, out: &mut Vec<u8>) -> Result<()> {
            out.push(self.0);
            Ok(())
        }
        fn encode_edited(
            &mut self,
            _: &RecordBatch,
            _: &OutputRows,
            out: &mut Vec<u8>,
        ) -> Result<()> {
            out.push(self.0);
            Ok(())
        }
        fn begin_unchanged(&mut self, _: &mut Vec<u8>) -> Result<()> {
            Ok(())
        }
        fn encode_unchanged(&mut self, _: &RecordBatch, _: usize, out: &mut Vec<u8>) -> Result<()> {
            out.push(self.0);
            Ok(())
        }
    }

    impl Format for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn decoder(&self, _: &FieldPlan) -> Box<dyn Decoder> {
            unreachable!("the pool only encodes")
        }
        fn encoder(&self, _: &FieldPlan, _: &Layout, _: &str) -> Result<Box<dyn Encoder>> {
            let n = self.built.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(Numbered(n as u8)))
        }
    }

    fn layout(columns: &[&str]) -> Arc<Layout> {
        Arc::new(Layout {
            columns: Some(columns.iter().map(|c| c.to_string()).collect()),
        })
    }

    /// Encodes one "batch" for output `i` with a set taken from `pool`, and puts it back.
    fn encode_one(pool: &EncoderPool, f: &Counting, l: &Arc<Layout>, i: usize) -> u8 {
        let mut set = pool.take(l, 3);
        let mut out = Vec::new();
        let batch = RecordBatch::new(0);
        set.get_with(i, f, &FieldPlan::new(), "c")
            .unwrap()
            .encode(&batch, &OutputRows::new(0), &mut out)
            .unwrap();
        pool.put(set);
        out[0]
    }

    #[test]
    fn issue_8_encoders_are_built_once_per_output_and_layout_not_per_batch() {
        let f = Counting::default();
        let pool = EncoderPool::new(2);
        let a = layout(&["a", "b"]);
        // many batches of outputs 0 and 2: one encoder each, reused (output 1 never built)
        for _ in 0..100 {
            assert_eq!(encode_one(&pool, &f, &a, 0), 0);
            assert_eq!(encode_one(&pool, &f, &a, 2), 1);
        }
        assert_eq!(f.built.load(Ordering::SeqCst), 2);
        // an equal layout of another object (another Arc) reuses them too
        assert_eq!(encode_one(&pool, &f, &layout(&["a", "b"]), 0), 0);
        assert_eq!(f.built.load(Ordering::SeqCst), 2);
        // two workers at once: two sets, each its own encoder; both kept (keep = 2)
        let (mut s1, mut s2) = (pool.take(&a, 3), pool.take(&a, 3));
        let mut out = Vec::new();
        for s in [&mut s1, &mut s2] {
            s.get_with(0, &f, &FieldPlan::new(), "c")
                .unwrap()
                .encode(&RecordBatch::new(0), &OutputRows::new(0), &mut out)
                .unwrap();
        }
        assert_eq!(out, [0, 2]);
        pool.put(s1);
        pool.put(s2);
        assert_eq!(pool.sets.lock().unwrap().len(), 2);
        // another layout gets encoders of its own, never one made for another header
        assert_eq!(encode_one(&pool, &f, &layout(&["x"]), 0), 3);
        assert_eq!(f.built.load(Ordering::SeqCst), 4);
        // no more than `keep` sets are kept
        assert_eq!(pool.sets.lock().unwrap().len(), 2);
    }
}
