//! Copies one object to another key of the same bucket through the connector, streaming
//! (download → upload, never the whole object in memory):
//! `s3-copy BUCKET SRC DST [PART_MIB [CONCURRENT_PARTS]]`.
//!
//! Region, endpoint and credentials come from the environment (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …). `cargo xtask bench s3` times it.

use keylink_connector_s3::{DEFAULT_CONCURRENT_PARTS, DEFAULT_PART_SIZE, S3Config};
use keylink_core::connector::{ConnectorConfig, Sink, Source};

#[tokio::main]
async fn main() -> keylink_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || keylink_core::Error::config("usage: s3-copy BUCKET SRC DST [PART_MIB [PARTS]]");
    let (bucket, src, dst, tuning) = match args.as_slice() {
        [b, s, d, tuning @ ..] if tuning.len() <= 2 => (b, s, d, tuning),
        _ => return Err(usage()),
    };
    let number = |i: usize, default: usize| match tuning.get(i) {
        Some(t) => t.parse::<usize>().map_err(|_| usage()),
        None => Ok(default),
    };
    let config = S3Config::new(bucket.as_str());
    config.validate()?;
    let store = config
        .build_store()
        .await?
        .with_part_size(number(0, DEFAULT_PART_SIZE >> 20)? << 20)
        .with_concurrent_parts(number(1, DEFAULT_CONCURRENT_PARTS)?);
    let mut reader = store.open(src).await?;
    let mut writer = store.create(dst).await?;
    let copied = async {
        while let Some(chunk) = reader.read_chunk().await? {
            writer.write(chunk).await?;
        }
        writer.finish().await
    }
    .await;
    match copied {
        Ok(()) => writer.commit().await,
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}
