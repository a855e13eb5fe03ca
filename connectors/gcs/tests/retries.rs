//! Retries and resumption, against a scripted HTTP server on loopback that answers each request
//! with the next of a list of canned responses (the emulator never fails on purpose): transient
//! failures are retried a bounded number of times, permanent ones are not, and an upload chunk
//! that arrived only partly goes on from the offset the store reports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use keylink_connector_gcs::{CHUNK_ALIGN, GcsConfig, GcsCredentials, GcsStore, MAX_ATTEMPTS};
use keylink_core::connector::{Sink, Source};
use keylink_core::{Bytes, ErrorKind};

/// A request as the server saw it: the request line, the Content-Range header and the body's
/// length.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    range: Option<String>,
    body: usize,
}

/// Serves the responses `script` makes (given the server's port) in order, one per connection
/// (`Connection: close`), and records the requests. Past the end of the script it answers 500.
struct Scripted {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    fn start(script: impl FnOnce(u16) -> Vec<String>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let responses = script(port);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut script = responses.into_iter();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let Some(request) = read_request(&stream) else {
                    continue;
                };
                record.lock().unwrap().push(request);
                let response = script.next().unwrap_or_else(|| error(500, "script ended"));
                let mut stream = stream;
                let _ = stream.write_all(response.as_bytes());
                let _ = stream.flush();
            }
        });
        Scripted { port, seen }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn store(&self) -> GcsStore {
        let mut c = GcsConfig::new("bucket-1");
        c.endpoint = Some(self.endpoint());
        c.credentials = Some(GcsCredentials::Anonymous);
        c.build_store(&Default::default()).await.unwrap()
    }
}

fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut length = 0;
    let mut range = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "content-range" => range = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        line: line.trim_end().to_string(),
        range,
        body: length,
    })
}

fn respond(status: u16, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n{headers}\r\n{body}",
        body.len()
    )
}

fn error(status: u16, message: &str) -> String {
    respond(
        status,
        "",
        &format!(r#"{{"error":{{"code":{status},"message":"{message}","errors":[]}}}}"#),
    )
}

const EMPTY_LIST: &str = r#"{"kind":"storage#objects"}"#;

fn object(size: usize) -> String {
    format!(
        r#"{{"kind":"storage#object","name":"out.bin","id":"bucket-1/out.bin","bucket":"bucket-1",
            "size":"{size}","generation":"1","metageneration":"1","selfLink":"http://x",
            "mediaLink":"http://x","storageClass":"STANDARD","etag":"e",
            "timeCreated":"2026-01-01T00:00:00Z","updated":"2026-01-01T00:00:00Z"}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_then_succeed() {
    let server = Scripted::start(|_| {
        vec![
            error(503, "busy"),
            error(429, "slow down"),
            respond(200, "", EMPTY_LIST),
        ]
    });
    let store = server.store().await;
    assert!(store.list("raw/").await.unwrap().is_empty());
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_are_bounded() {
    let server = Scripted::start(|_| (0..10).map(|_| error(503, "busy")).collect());
    let store = server.store().await;
    let e = store.list("raw/").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("(gave up after {MAX_ATTEMPTS} tries)")),
        "{e}"
    );
    assert!(e.to_string().contains("gs://bucket-1/raw/"), "{e}");
    assert_eq!(server.seen().len(), MAX_ATTEMPTS as usize);
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_failures_are_not_retried() {
    let server = Scripted::start(|_| vec![error(403, "denied"), respond(200, "", EMPTY_LIST)]);
    let store = server.store().await;
    let e = store.list("").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert_eq!(
        e.to_string(),
        "gcs connector: cannot list gs://bucket-1/: denied (HTTP 403)"
    );
    assert_eq!(server.seen().len(), 1);
}

/// A chunk that arrived only partly, a chunk whose answer was a 503 (then the session's status
/// is asked and the rest sent), and the tail with the size at commit.
#[tokio::test(flavor = "multi_thread")]
async fn chunks_resume_where_the_store_stopped() {
    let a = CHUNK_ALIGN;
    let total = 2 * a + 10;
    let session = |port: u16| {
        respond(
            200,
            &format!("Location: http://127.0.0.1:{port}/upload/session-1?upload_id=capability\r\n"),
            "{}",
        )
    };
    let held = |last: usize| respond(308, &format!("Range: bytes=0-{last}\r\n"), "");
    let server = Scripted::start(|port| {
        vec![
            session(port),
            held(a / 2 - 1),                  // chunk 1: only half arrived
            held(a - 1),                      // … the rest of chunk 1
            error(503, "oops"),               // chunk 2 failed
            held(a + a / 4 - 1),              // the status: a quarter of chunk 2 arrived
            held(2 * a - 1),                  // … the rest of chunk 2
            respond(200, "", &object(total)), // the tail with the size: the object exists
        ]
    });
    let store = server.store().await.with_chunk_size(a);
    let mut w = store.create("out.bin").await.unwrap();
    w.write(Bytes::from(vec![7u8; total])).await.unwrap();
    w.finish().await.unwrap();
    w.commit().await.unwrap();
    let seen = server.seen();
    let ranges: Vec<(Option<&str>, usize)> =
        seen.iter().map(|s| (s.range.as_deref(), s.body)).collect();
    assert!(
        seen[0]
            .line
            .starts_with("POST /upload/storage/v1/b/bucket-1/o?"),
        "{seen:?}"
    );
    let q = a / 4;
    assert_eq!(
        ranges[1..],
        [
            (Some(format!("bytes 0-{}/*", a - 1).as_str()), a),
            (Some(format!("bytes {}-{}/*", a / 2, a - 1).as_str()), a / 2),
            (Some(format!("bytes {a}-{}/*", 2 * a - 1).as_str()), a),
            (Some("bytes */*"), 0),
            (
                Some(format!("bytes {}-{}/*", a + q, 2 * a - 1).as_str()),
                a - q
            ),
            (
                Some(format!("bytes {}-{}/{total}", 2 * a, total - 1).as_str()),
                10
            ),
        ],
        "{seen:?}"
    );
}
