//! Copies one object to another name in the same bucket through the connector, streaming
//! (download → upload, never the whole object in memory):
//! `gcs-copy BUCKET SRC DST [CHUNK_MIB]`.
//!
//! The endpoint and credentials come from the environment (`STORAGE_EMULATOR_HOST`, or
//! Application Default Credentials against Google). `cargo xtask bench gcs` times it.

use keylink_connector_gcs::{DEFAULT_CHUNK_SIZE, GcsConfig};
use keylink_core::connector::{ConnectorConfig, Sink, Source};

#[tokio::main]
async fn main() -> keylink_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || keylink_core::Error::config("usage: gcs-copy BUCKET SRC DST [CHUNK_MIB]");
    let (bucket, src, dst, chunk_mib) = match args.as_slice() {
        [b, s, d] => (b, s, d, DEFAULT_CHUNK_SIZE >> 20),
        [b, s, d, c] => (b, s, d, c.parse().map_err(|_| usage())?),
        _ => return Err(usage()),
    };
    let config = GcsConfig::new(bucket.as_str());
    config.validate()?;
    let store = config
        .build_store(&Default::default())
        .await?
        .with_chunk_size(chunk_mib << 20);
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
