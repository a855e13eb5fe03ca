//! A batch job's output written to a topic (SPEC §11): the bytes the engine makes for an output
//! (JSON Lines, one record per line) become messages, one per line, sent within the job's
//! transaction on that connector.
//!
//! Every topic output of a job shares one [`MessageTransaction`] ([`SharedTransaction`]); each
//! output's writer is a [`TopicWriter`], an [`ObjectWriter`] so the engine handles it like any
//! other output. The engine commits topic outputs after every object output; the transaction
//! itself is committed by the last topic writer's commit (the others only count down), and
//! aborted by the first abort.
//!
//! Message keys: the record's `strmMeta.keyLink` for encrypted and derived records (never a
//! plaintext value); none for rejected records (the raw input line, which may not even parse).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use crate::connector::ObjectWriter;
use crate::error::{Error, ErrorKind, Result};
use crate::stream::{MessageTransaction, OutMessage, TransactionalSink};

/// The one transaction the topic outputs of a job share.
pub(crate) struct SharedTransaction {
    tx: tokio::sync::Mutex<Option<Box<dyn MessageTransaction>>>,
    /// Writers that have not committed yet: the last one commits the transaction.
    writers: AtomicUsize,
}

impl SharedTransaction {
    /// Begins the transaction.
    pub(crate) async fn begin(sink: &dyn TransactionalSink) -> Result<Arc<Self>> {
        let tx = sink.begin().await?;
        Ok(Arc::new(SharedTransaction {
            tx: tokio::sync::Mutex::new(Some(tx)),
            writers: AtomicUsize::new(0),
        }))
    }

    /// A writer of `topic` within the transaction; `keyed`: each message's key is its record's
    /// `strmMeta.keyLink`.
    pub(crate) fn writer(
        self: &Arc<Self>,
        topic: &str,
        output: &str,
        keyed: bool,
    ) -> Box<dyn ObjectWriter> {
        self.writers.fetch_add(1, Ordering::SeqCst);
        Box::new(TopicWriter {
            shared: self.clone(),
            topic: topic.to_string(),
            output: output.to_string(),
            keyed,
            partial: Vec::new(),
        })
    }

    async fn abort(&self) -> Result<()> {
        match self.tx.lock().await.take() {
            Some(tx) => tx.abort().await,
            None => Ok(()),
        }
    }
}

/// One topic output: splits what it is given into lines, sends each as a message.
struct TopicWriter {
    shared: Arc<SharedTransaction>,
    topic: String,
    /// The output's name (`encrypted`), for messages.
    output: String,
    keyed: bool,
    /// The start of a line whose end has not come yet.
    partial: Vec<u8>,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "strmMeta", borrow)]
    meta: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(rename = "keyLink", borrow)]
    key_link: Option<std::borrow::Cow<'a, str>>,
}

impl TopicWriter {
    fn message(&self, line: &[u8]) -> Result<OutMessage> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let key = if self.keyed {
            // the error never shows the line: it holds personal data
            let parsed: Line<'_> = serde_json::from_slice(line).map_err(|e| {
                Error::data(format!(
                    "the {} output made a record that is not one JSON object per line (column \
                     {}); cannot send it as a message",
                    self.output,
                    e.column()
                ))
            })?;
            let key = parsed.meta.and_then(|m| m.key_link).ok_or_else(|| {
                Error::data(format!(
                    "a record of the {} output has no strmMeta.keyLink to key its message with",
                    self.output
                ))
            })?;
            Some(Bytes::copy_from_slice(key.as_bytes()))
        } else {
            None
        };
        Ok(OutMessage {
            key,
            payload: Bytes::copy_from_slice(line),
        })
    }

    async fn send(&self, messages: Vec<OutMessage>) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut guard = self.shared.tx.lock().await;
        let tx = guard.as_mut().ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                format!("writing topic {}: its transaction was aborted", self.topic),
            )
        })?;
        tx.send(&self.topic, &messages).await.map_err(|e| {
            e.context(format!(
                "sending the {} output to {}",
                self.output, self.topic
            ))
        })
    }
}

#[async_trait]
impl ObjectWriter for TopicWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let mut messages = Vec::new();
        let mut rest = &chunk[..];
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(nl);
            rest = &tail[1..];
            if self.partial.is_empty() {
                if !line.is_empty() {
                    messages.push(self.message(line)?);
                }
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                messages.push(self.message(&whole)?);
            }
        }
        self.partial.extend_from_slice(rest);
        self.send(messages).await
    }

    async fn finish(&mut self) -> Result<()> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let last = std::mem::take(&mut self.partial);
        let m = self.message(&last)?;
        self.send(vec![m]).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let mut guard = self.shared.tx.lock().await;
        if guard.is_none() {
            return Err(Error::new(
                ErrorKind::Other,
                format!(
                    "committing topic {}: its transaction was aborted",
                    self.topic
                ),
            ));
        }
        if self.shared.writers.fetch_sub(1, Ordering::SeqCst) != 1 {
            // another topic output of the job commits the transaction, last
            return Ok(());
        }
        let tx = guard.take().expect("checked above");
        drop(guard);
        tx.commit().await
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.shared.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Recorder(Arc<std::sync::Mutex<Vec<(String, OutMessage)>>>);

    #[async_trait]
    impl MessageTransaction for Recorder {
        async fn send(&mut self, topic: &str, messages: &[OutMessage]) -> Result<()> {
            let mut v = self.0.lock().unwrap();
            v.extend(messages.iter().map(|m| (topic.to_string(), m.clone())));
            Ok(())
        }
        async fn commit(self: Box<Self>) -> Result<()> {
            Ok(())
        }
        async fn abort(self: Box<Self>) -> Result<()> {
            Ok(())
        }
    }

    fn shared(rec: &Recorder) -> Arc<SharedTransaction> {
        Arc::new(SharedTransaction {
            tx: tokio::sync::Mutex::new(Some(Box::new(Recorder(rec.0.clone())))),
            writers: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn lines_split_across_writes_become_one_message_each() {
        let rec = Recorder::default();
        let s = shared(&rec);
        let mut w = s.writer("t", "encrypted", true);
        let a = r#"{"a":"x","strmMeta":{"keyLink":"k1"}}"#;
        let b = r#"{"a":"alice@example.com","strmMeta":{"keyLink":"k2"}}"#;
        let all = format!("{a}\n{b}\n");
        let (one, two) = all.split_at(a.len() + 10);
        w.write(Bytes::from(one.to_string())).await.unwrap();
        w.write(Bytes::from(two.to_string())).await.unwrap();
        w.finish().await.unwrap();
        w.commit().await.unwrap();
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.payload, a.as_bytes());
        assert_eq!(got[1].1.payload, b.as_bytes());
        assert_eq!(got[1].1.key.as_deref(), Some(&b"k2"[..]));
    }

    #[tokio::test]
    async fn rejected_lines_have_no_key_and_a_last_line_without_newline_is_sent() {
        let rec = Recorder::default();
        let s = shared(&rec);
        let mut w = s.writer("r", "rejected", false);
        w.write(Bytes::from_static(b"not json\n{\"x\":1}"))
            .await
            .unwrap();
        w.finish().await.unwrap();
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(_, m)| m.key.is_none()));
        assert_eq!(got[1].1.payload, &b"{\"x\":1}"[..]);
    }

    #[tokio::test]
    async fn a_record_without_key_link_is_refused_without_showing_it() {
        let rec = Recorder::default();
        let s = shared(&rec);
        let mut w = s.writer("t", "derived[0]", true);
        for bad in [
            &b"{\"Email\":\"alice@example.com\"}\n"[..],
            b"alice@example.com\n",
        ] {
            let e = w.write(Bytes::copy_from_slice(bad)).await.unwrap_err();
            assert!(!e.to_string().contains("alice"), "{e}");
        }
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_last_writer_commits_and_an_abort_ends_the_transaction() {
        let rec = Recorder::default();
        let s = shared(&rec);
        let a = s.writer("a", "encrypted", false);
        let b = s.writer("b", "derived[0]", false);
        a.commit().await.unwrap();
        assert!(
            s.tx.lock().await.is_some(),
            "committed before the last writer"
        );
        b.commit().await.unwrap();
        assert!(s.tx.lock().await.is_none());

        let s = shared(&rec);
        let a = s.writer("a", "encrypted", false);
        let mut b = s.writer("b", "derived[0]", false);
        a.abort().await.unwrap();
        assert!(b.write(Bytes::from_static(b"x\n")).await.is_err());
        assert!(b.commit().await.is_err());
    }
}
