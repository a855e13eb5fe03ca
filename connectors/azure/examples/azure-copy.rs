//! Copies one blob to another name in the same container through the connector, streaming
//! (download → upload, never the whole blob in memory):
//! `azure-copy CONTAINER SRC DST [BLOCK_MIB [CONCURRENT_BLOCKS]]`.
//!
//! Account, endpoint and key come from `AZURE_STORAGE_CONNECTION_STRING`. `cargo xtask bench
//! azure` times it.

use keylink_connector_azure::{AzureConfig, DEFAULT_BLOCK_SIZE, DEFAULT_CONCURRENT_BLOCKS};
use keylink_core::connector::{ConnectorConfig, Sink, Source};

#[tokio::main]
async fn main() -> keylink_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        || keylink_core::Error::config("usage: azure-copy CONTAINER SRC DST [BLOCK_MIB [BLOCKS]]");
    let (container, src, dst, tuning) = match args.as_slice() {
        [c, s, d, tuning @ ..] if tuning.len() <= 2 => (c, s, d, tuning),
        _ => return Err(usage()),
    };
    let number = |i: usize, default: usize| match tuning.get(i) {
        Some(t) => t.parse::<usize>().map_err(|_| usage()),
        None => Ok(default),
    };
    let config = AzureConfig::new(container.as_str());
    config.validate()?;
    let store = config
        .build_store()
        .await?
        .with_block_size(number(0, DEFAULT_BLOCK_SIZE >> 20)? << 20)
        .with_concurrent_blocks(number(1, DEFAULT_CONCURRENT_BLOCKS)?);
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
