//! `cargo xtask schemas`: writes `schemas/{job,stream-job,config,contract}.schema.json` — the output of
//! `keylink schema …` of the default build (every connector, format and key store keylink ships;
//! no third party's, no test-only ones). `tests/tests/schemas.rs` fails when they are stale.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run, show};

/// The schemas written, by `keylink schema` argument.
pub const SCHEMAS: [&str; 4] = ["job", "stream-job", "config", "contract"];

pub fn write() -> Result<()> {
    // `-p keylink` alone: default features, and no dev-dependency (testkit) unified in
    run(cargo().args(["build", "-q", "-p", "keylink", "--bin", "keylink"]))?;
    let exe = crate::target_dir().join("debug/keylink");
    let dir = root().join("schemas");
    std::fs::create_dir_all(&dir)?;
    for what in SCHEMAS {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["schema", what]).stderr(Stdio::inherit());
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {}", show(&cmd)))?;
        if !out.status.success() {
            bail!("{} failed ({})", show(&cmd), out.status);
        }
        let file = dir.join(format!("{what}.schema.json"));
        write_if_changed(&file, &out.stdout)?;
    }
    Ok(())
}

fn write_if_changed(file: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(file).ok().as_deref() == Some(bytes) {
        eprintln!("xtask: {} is up to date", file.display());
        return Ok(());
    }
    std::fs::write(file, bytes).with_context(|| format!("cannot write {}", file.display()))?;
    eprintln!("xtask: wrote {}", file.display());
    Ok(())
}
