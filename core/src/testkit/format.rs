//! A check of a format's [`Splitter`] and [`Decoder::fork`]: decoding an object in pieces must
//! give exactly what one decoder gives reading it whole (the engine decodes the pieces on every
//! core; see [`crate::format::Splitter`]).
//!
//! A format crate calls [`check_pieces`] from a property test with random inputs, chunk sizes
//! and choices of cuts:
//!
//! ```no_run
//! # use keylink_core::format::Format;
//! # use keylink_core::record::FieldPlan;
//! # fn my_format() -> Box<dyn Format> { unimplemented!() }
//! let mut plan = FieldPlan::new();
//! plan.slot("email", true);
//! let input = b"id,email\n1,a@example.com\n2,b@example.com\n";
//! let pieces = keylink_core::testkit::format::check_pieces(
//!     my_format().as_ref(),
//!     &plan,
//!     input,
//!     &[7, 3],         // read in chunks of 7 and 3 bytes, in turn
//!     &[true, false],  // take every other cut the splitter finds
//! )
//! .unwrap();
//! assert!(pieces >= 1);
//! ```

use crate::format::{Decoder, Format, Layout, Splitter};
use crate::record::{FieldPlan, RecordBatch, Slot, ValueKind};
use crate::reject::{Reject, Rejects};

/// One decoded record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    line: u64,
    raw: Vec<u8>,
    offsets: Vec<u32>,
    slots: Vec<Owned>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Missing,
    Null,
    Value(Vec<u8>, (u32, u32), ValueKind),
}

/// Everything a decode gave: records, rejects with their raw bytes, the layout, or the error.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decoded {
    records: Vec<Rec>,
    rejects: Vec<Reject>,
    raw_rejects: Vec<u8>,
    layout: Option<Layout>,
    error: Option<String>,
}

impl Decoded {
    fn take(&mut self, batch: &mut RecordBatch, rejects: &mut Rejects) {
        for r in batch.records() {
            let slots = r
                .slots()
                .iter()
                .map(|s| match *s {
                    Slot::Missing => Owned::Missing,
                    Slot::Null => Owned::Null,
                    Slot::Value { value, span, kind } => {
                        Owned::Value(r.value_bytes(value).to_vec(), span, kind)
                    }
                })
                .collect();
            self.records.push(Rec {
                line: r.line(),
                raw: r.raw().to_vec(),
                offsets: r.offsets().to_vec(),
                slots,
            });
        }
        batch.clear();
        let (items, raw) = rejects.drain();
        self.rejects.extend(items);
        self.raw_rejects.extend(raw);
    }

    /// Decodes `bytes` with `decoder` (to its end and [`Decoder::finish`] if `last`).
    fn decode(&mut self, decoder: &mut dyn Decoder, bytes: &[u8], n_slots: usize, last: bool) {
        if self.error.is_some() {
            return;
        }
        let mut batch = RecordBatch::new(n_slots);
        let mut rejects = Rejects::new(true);
        let mut result = decoder.decode(bytes, &mut batch, &mut rejects);
        if last && result.is_ok() {
            result = decoder.finish(&mut batch, &mut rejects);
        }
        self.take(&mut batch, &mut rejects);
        if let Err(e) = result {
            self.error = Some(e.to_string());
        }
    }
}

/// Decodes `input` with one decoder of `format` and again in pieces, and compares.
///
/// For the pieces, the input is read in chunks whose sizes are `chunks`, in turn (a zero counts
/// as one), and every chunk is [scanned](Splitter::scan). A first decoder reads the object's start
/// up to each cut, until it can [fork](Decoder::fork) there; after that, each cut found is taken or
/// skipped as `take` says, in turn (all are taken when it is empty), and each piece between two
/// taken cuts — the last one ending at the input's end — is decoded and finished by a decoder
/// forked from the first one at the piece's line. Records, their lines and slots, rejects with
/// their raw bytes, the layout and any error must equal those of one decoder reading `input`
/// whole.
///
/// Returns how many pieces the input was cut into (1 when the first decoder never forked), or
/// what differs.
pub fn check_pieces(
    format: &dyn Format,
    plan: &FieldPlan,
    input: &[u8],
    chunks: &[usize],
    take: &[bool],
) -> Result<usize, String> {
    let n = plan.len();
    let mut whole = Decoded::default();
    let mut one = format.decoder(plan);
    whole.decode(one.as_mut(), input, n, true);
    whole.layout = one.layout();

    let mut head = format.decoder(plan);
    let mut splitter: Box<dyn Splitter> = head
        .splitter()
        .ok_or_else(|| format!("the {} format has no splitter", format.name()))?;
    let mut split = Decoded::default();
    // where the first decoder stopped, and the cuts taken after it (offset, line)
    let mut head_end = 0;
    let mut forked: Vec<(usize, u64)> = Vec::new();
    let mut takes = take.iter().copied().cycle();
    let mut sizes = chunks.iter().map(|&s| s.max(1)).cycle();
    let mut pos = 0;
    while pos < input.len() {
        let end = (pos + sizes.next().unwrap_or(input.len())).min(input.len());
        if let Some(cut) = splitter.scan(&input[pos..end]) {
            if cut.at > end - pos {
                return Err(format!(
                    "a cut at {} of a chunk of {} bytes",
                    cut.at,
                    end - pos
                ));
            }
            let at = pos + cut.at;
            if forked.is_empty() {
                split.decode(head.as_mut(), &input[head_end..at], n, false);
                head_end = at;
                if split.error.is_none()
                    && head.layout().is_some()
                    && takes.next().unwrap_or(true)
                    && head.fork(cut.line).is_some()
                {
                    forked.push((at, cut.line));
                }
            } else if takes.next().unwrap_or(true) {
                forked.push((at, cut.line));
            }
        }
        pos = end;
    }
    if forked.is_empty() {
        split.decode(head.as_mut(), &input[head_end..], n, true);
    } else {
        let ends = forked.iter().skip(1).map(|&(at, _)| at);
        for (&(start, line), end) in forked.iter().zip(ends.chain([input.len()])) {
            let Some(mut piece) = head.fork(line) else {
                return Err(format!("the decoder did not fork again at line {line}"));
            };
            split.decode(piece.as_mut(), &input[start..end], n, true);
        }
    }
    split.layout = head.layout();
    if split == whole {
        return Ok(forked.len().max(1));
    }
    Err(difference(&whole, &split, &forked))
}

/// What differs between the whole decode and the pieces'.
fn difference(whole: &Decoded, split: &Decoded, cuts: &[(usize, u64)]) -> String {
    let cuts = format!("cut at (offset, line) {cuts:?}");
    if whole.error != split.error {
        return format!(
            "whole: error {:?}; in pieces: error {:?}; {cuts}",
            whole.error, split.error
        );
    }
    let pairs = whole.records.iter().zip(&split.records);
    if let Some((i, (a, b))) = pairs.enumerate().find(|(_, (a, b))| a != b) {
        return format!("record {i} differs: whole {a:?}, in pieces {b:?}; {cuts}");
    }
    if whole.records.len() != split.records.len() {
        return format!(
            "whole: {} records; in pieces: {}; {cuts}",
            whole.records.len(),
            split.records.len()
        );
    }
    if whole.rejects != split.rejects {
        return format!(
            "whole: rejects {:?}; in pieces: {:?}; {cuts}",
            whole.rejects, split.rejects
        );
    }
    if whole.raw_rejects != split.raw_rejects {
        return format!("the rejects' raw bytes differ; {cuts}");
    }
    format!(
        "whole: layout {:?}; in pieces: {:?}; {cuts}",
        whole.layout, split.layout
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::lines::Lines;

    #[test]
    fn a_right_splitter_passes_and_a_wrong_one_is_caught() {
        let input = b"h\naa\nbbb\nc\ndddd\ne\n";
        let plan = FieldPlan::new();
        assert_eq!(check_pieces(&Lines::Split, &plan, input, &[3], &[]), Ok(5));
        assert_eq!(
            check_pieces(&Lines::Split, &plan, input, &[5], &[true, false]),
            Ok(2)
        );
        // a format without a splitter is not checked by mistake
        let e = check_pieces(&Lines::Whole, &plan, input, &[3], &[]).unwrap_err();
        assert!(e.contains("no splitter"), "{e}");
        let e = check_pieces(&Lines::Wrong, &plan, input, &[3], &[]).unwrap_err();
        assert!(e.contains("record 0 differs"), "{e}");
    }
}
