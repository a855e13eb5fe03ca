//! What the CLI prints: summaries on stdout, errors and progress on stderr. Never record values.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use keylink_core::connector::ObjectMeta;
use keylink_core::engine::{CheckedJob, Progress};
use keylink_core::summary::JobSummary;

/// Writes to stdout; a closed pipe (`keylink … | head`) ends the process quietly.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Prints an error and its causes to stderr.
pub fn error(e: &anyhow::Error) {
    let mut msg = format!("keylink: error: {e}");
    for cause in e.chain().skip(1) {
        let _ = write!(msg, "\n  caused by: {cause}");
    }
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human summary of a run.
pub fn summary_text(job: &Path, s: &JobSummary) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "keylink: {} — contract {}", job.display(), s.contract);
    if let Some(shard) = &s.shard {
        let _ = writeln!(
            t,
            "  shard     {shard}: {} input object(s) of the job's slice",
            s.inputs.len()
        );
    }
    for i in &s.inputs {
        let rejected: u64 = i.rejects.values().map(|r| r.count).sum();
        let _ = writeln!(
            t,
            "  read      {}: {} records, {} accepted, {} rejected",
            i.object,
            thousands(i.rows_read),
            thousands(i.rows_accepted),
            thousands(rejected)
        );
        for (reason, r) in &i.rejects {
            let mut lines: Vec<String> = r.lines.iter().map(|l| l.to_string()).collect();
            if r.count > r.lines.len() as u64 {
                lines.push(format!("… {} more", r.count - r.lines.len() as u64));
            }
            let _ = writeln!(
                t,
                "  rejected  {reason}: {} (line {}) — {}",
                thousands(r.count),
                lines.join(", "),
                r.first_detail
            );
        }
        if !i.fields_never_seen.is_empty() {
            let _ = writeln!(
                t,
                "  missing   no record carries {}: misspelt in the contract or the job? (exit code 1)",
                i.fields_never_seen.join(", ")
            );
        }
    }
    for o in &s.outputs {
        let unit = if o.name == "keys" { "keys" } else { "records" };
        let _ = writeln!(
            t,
            "  wrote     {:<10} {}: {} {unit}",
            o.name,
            o.object,
            thousands(o.rows)
        );
    }
    let _ = writeln!(
        t,
        "  keys      {} created, {} reused (key group {})",
        thousands(s.keys_created),
        thousands(s.keys_reused),
        s.key_group
    );
    if s.records_after_forget > 0 {
        let _ = writeln!(
            t,
            "  forgotten {} records belong to forgotten scopes: encrypted under new keys",
            thousands(s.records_after_forget)
        );
    }
    if s.consent_defaulted > 0 {
        let _ = writeln!(
            t,
            "  consent   {} records fell back to the default consent levels",
            thousands(s.consent_defaulted)
        );
    }
    let _ = writeln!(
        t,
        "  total     {} records read, {} accepted, {} rejected in {:.2} s ({} records/s)",
        thousands(s.rows_read),
        thousands(s.rows_accepted),
        thousands(s.rows_rejected),
        s.seconds,
        thousands(s.rows_per_second as u64)
    );
    t
}

/// `keylink list`: the registered components by kind.
pub fn list_text(all: &[&keylink_core::registry::Component]) -> String {
    let mut t = String::new();
    let mut last = None;
    for c in all {
        if last != Some(c.kind) {
            let title = match c.kind {
                keylink_core::registry::Kind::Connector => "connectors (connectors: { NAME: …})",
                keylink_core::registry::Kind::Format => "formats (data_type)",
                keylink_core::registry::Kind::KeyStore => "key stores (key_store)",
            };
            let _ = writeln!(t, "{}{title}", if last.is_some() { "\n" } else { "" });
            last = Some(c.kind);
        }
        let schemes = if c.schemes.is_empty() {
            String::new()
        } else {
            format!(
                " [{}]",
                c.schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(t, "  {:<10} {}{schemes}", c.name, c.description);
        let _ = writeln!(t, "  {:<10} e.g. {}", "", c.example);
    }
    t
}

/// What `keylink finalize` did.
pub fn finalize_text(job: &Path, m: &keylink_core::shard::SuccessManifest) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "keylink finalize: {} — all {} shards committed (key group {})",
        job.display(),
        m.shards,
        m.key_group
    );
    for (output, rows) in &m.rows_by_output {
        let unit = if output == "keys" { "keys" } else { "records" };
        let _ = writeln!(
            t,
            "  {output:<10} {} {unit} in {} parts",
            thousands(*rows),
            m.shards
        );
    }
    let _ = writeln!(
        t,
        "  total      {} records read, {} accepted, {} rejected",
        thousands(m.rows_read),
        thousands(m.rows_accepted),
        thousands(m.rows_rejected)
    );
    if let Some(first) = m.parts.first().and_then(|p| p.outputs.first()) {
        let dir = first.path.rsplit_once('/').map_or("", |(d, _)| d);
        let _ = writeln!(
            t,
            "  wrote      _SUCCESS in {} (connector '{}'): parts, row counts, sizes, SHA-256",
            if dir.is_empty() { "." } else { dir },
            first.connector
        );
    }
    t
}

/// The human summary of `keylink decrypt`.
pub fn decrypt_text(s: &keylink_core::decrypt::DecryptSummary) -> String {
    let mut t = String::new();
    let i = &s.input;
    let _ = writeln!(
        t,
        "keylink decrypt: {} keys loaded\n  read      {}: {} records",
        thousands(s.keys_loaded),
        i.object,
        thousands(i.rows_read)
    );
    for (reason, r) in &i.rejects {
        let _ = writeln!(
            t,
            "  not decrypted  {reason}: {} (line {}{}) — {}",
            thousands(r.count),
            r.lines
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if r.count > r.lines.len() as u64 {
                ", …"
            } else {
                ""
            },
            r.first_detail
        );
    }
    let _ = writeln!(
        t,
        "  skipped   {} records whose consent does not cover the purposes",
        thousands(s.rows_without_consent)
    );
    let _ = writeln!(
        t,
        "  wrote     {}: {} records",
        s.output,
        thousands(s.rows_written)
    );
    t
}

/// The text of `keylink validate`.
pub fn validate_text(job: &Path, p: &CheckedJob, inputs: &[ObjectMeta]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "keylink: {} is valid", job.display());
    let _ = writeln!(
        t,
        "  contract  {} ({})",
        p.plan.contract_ref(),
        p.contract_file.display()
    );
    let _ = writeln!(
        t,
        "  fields    {}",
        p.plan
            .field_plan()
            .fields()
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        t,
        "  inputs    {} object(s) on connector '{}' ({})",
        inputs.len(),
        p.source_connector,
        p.input_format.name()
    );
    for i in inputs.iter().take(20) {
        let _ = writeln!(t, "            {}", p.source.describe(&i.path));
    }
    if inputs.len() > 20 {
        let _ = writeln!(t, "            … {} more", inputs.len() - 20);
    }
    for o in &p.outputs {
        let _ = writeln!(
            t,
            "  output    {:<9} connector '{}' path {}",
            o.name, o.connector, o.path
        );
    }
    t
}

/// A progress bar on stderr.
pub struct ProgressBar {
    bar: indicatif::ProgressBar,
    rows: Mutex<u64>,
}

impl ProgressBar {
    /// A hidden bar until the inputs are known.
    pub fn new() -> Self {
        ProgressBar {
            bar: indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            ),
            rows: Mutex::new(0),
        }
    }
}

impl Progress for ProgressBar {
    fn inputs(&self, count: usize, total_bytes: Option<u64>) {
        let style = match total_bytes {
            Some(total) => {
                self.bar.set_length(total);
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}",
                )
            }
            None => indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bytes} ({bytes_per_sec}) {msg}",
            ),
        };
        if let Ok(style) = style {
            self.bar.set_style(style);
        }
        self.bar.set_message(format!("{count} input object(s)"));
    }

    fn start_object(&self, name: &str) {
        self.bar.set_message(name.to_string());
    }

    fn advance(&self, bytes: u64, rows: u64) {
        if bytes == 0 && rows == 0 {
            self.bar.finish_and_clear();
            return;
        }
        let mut r = self.rows.lock().expect("poisoned");
        *r += rows;
        self.bar.inc(bytes);
    }
}

/// One line per watch event.
pub fn watch_event_text(e: &keylink_core::watch::WatchEvent) -> String {
    use keylink_core::watch::{Status, WatchEvent};
    match e {
        WatchEvent::Started { job, state, known } => format!(
            "keylink: watching {job} (state {state}, {known} objects already recorded); \
             SIGINT/SIGTERM stops after the current object\n"
        ),
        WatchEvent::Object { entry, seconds } => match entry.status {
            Status::Done => format!(
                "  done      {}: {} records, {} accepted, {} rejected in {seconds:.1} s → {}\n",
                entry.path,
                thousands(entry.rows_read),
                thousands(entry.rows_accepted),
                thousands(entry.rows_rejected),
                entry.outputs.join(", ")
            ),
            Status::Failed => format!(
                "  failed    {} (attempt {}): {}\n",
                entry.path,
                entry.attempts,
                entry.reason.as_deref().unwrap_or("")
            ),
        },
        WatchEvent::Interval {
            listed,
            processed,
            failed,
            given_up,
        } if *processed > 0 || *failed > 0 => format!(
            "  interval  {listed} objects selected: {processed} processed, {failed} failed, \
             {given_up} given up until they change\n"
        ),
        WatchEvent::Interval { .. } => String::new(),
        WatchEvent::ListingFailed { reason } => {
            format!("  listing failed (tried again next interval): {reason}\n")
        }
        WatchEvent::Stopped => "keylink: watcher stopped\n".to_string(),
    }
}

/// The table of `keylink watch-status`.
pub fn watch_status_text(
    state: &std::path::Path,
    entries: &[keylink_core::watch::Entry],
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "{}: {} objects", state.display(), entries.len());
    for e in entries {
        let status = match e.status {
            keylink_core::watch::Status::Done => "done",
            keylink_core::watch::Status::Failed => "failed",
        };
        let _ = writeln!(
            t,
            "  {status:<7} {}  {}  {} read, {} accepted, {} rejected  attempts {}{}",
            e.at,
            e.path,
            thousands(e.rows_read),
            thousands(e.rows_accepted),
            thousands(e.rows_rejected),
            e.attempts,
            e.reason
                .as_deref()
                .map(|r| format!("  — {r}"))
                .unwrap_or_default()
        );
        for o in &e.outputs {
            let _ = writeln!(t, "            → {o}");
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
