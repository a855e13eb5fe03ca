//! `keylink schema job|stream-job|config|contract`: the JSON Schemas of the files keylink reads,
//! generated from the config types (see `keylink_core::schema`) with every component compiled
//! into this binary. The committed `schemas/*.schema.json` are this command's output for the
//! default build (`cargo xtask schemas`).

use anyhow::Result;

use crate::output;

/// Which file's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum What {
    /// A batch job.
    Job,
    /// A stream job (`keylink stream`).
    StreamJob,
    /// keylink's config file (keylink.yaml).
    Config,
    /// A data contract.
    Contract,
}

/// The schema of `what`, pretty-printed with a final newline.
pub(crate) fn render(what: What) -> Result<String> {
    let schema = match what {
        What::Job => keylink_core::schema::job(),
        What::Config => keylink_core::schema::config(),
        What::Contract => keylink_core::schema::contract(),
        What::StreamJob => keylink_core::schema::stream_job(),
    };
    Ok(serde_json::to_string_pretty(&schema)? + "\n")
}

pub(crate) fn run(what: What) -> Result<u8> {
    output::print(&render(what)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_job_schema_names_its_sources_and_refuses_unknown_keys() {
        let s: serde_json::Value = serde_json::from_str(&render(What::StreamJob).unwrap()).unwrap();
        assert_eq!(s["additionalProperties"], false, "{s}");
        let text = s.to_string();
        for needle in ["\"http\"", "\"kafka\"", "max_future_skew", "group_id"] {
            assert!(text.contains(needle), "{needle} missing");
        }
    }

    #[test]
    fn every_compiled_component_is_in_the_schemas() {
        let job = render(What::Job).unwrap();
        let config = render(What::Config).unwrap();
        for c in keylink_core::registry::components() {
            let needle = match c.kind {
                keylink_core::registry::Kind::Format => format!("\"{}\": {{", c.name),
                _ => format!("\"const\": \"{}\"", c.name),
            };
            let haystack = match c.kind {
                keylink_core::registry::Kind::Format => &job,
                _ => &config,
            };
            assert!(haystack.contains(&needle), "{} {} missing", c.kind, c.name);
        }
    }
}
