//! The connector's configuration: `{ "type": "gcs", "bucket": …, … }`, checked without I/O.

use std::path::PathBuf;
use std::sync::Arc;

use keylink_core::connector::{BuildContext, ConnectorConfig, ObjectLocation, Sink, Source};
use keylink_core::{Error, Result, Sensitive, async_trait, typetag};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::store::GcsStore;

/// Google's endpoint, used unless `endpoint` or `STORAGE_EMULATOR_HOST` names another.
pub const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

/// The environment variable Google's client libraries read for an emulator (`127.0.0.1:4443` or
/// `http://127.0.0.1:4443`).
pub const EMULATOR_HOST_VAR: &str = "STORAGE_EMULATOR_HOST";

/// Configuration of the GCS connector:
///
/// ```json
/// { "type": "gcs", "bucket": "my-lake" }
/// ```
///
/// Everything but `bucket` is optional. Against Google, the credentials are Application Default
/// Credentials unless `credentials` says otherwise. Against another endpoint (`endpoint` or
/// `STORAGE_EMULATOR_HOST`: an emulator) no credentials are looked for unless `credentials`
/// gives them: a Google token is never sent to a server that is not Google's by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = |s: &mut schemars::Schema| keylink_core::schema::with_alias(s, "bucket", "bucket_name"))]
pub struct GcsConfig {
    /// The bucket holding the objects (`bucket_name` is accepted too, as in the original
    /// system's bucket locations). Object paths are object names in this bucket.
    #[serde(alias = "bucket_name")]
    pub bucket: String,
    /// The URL of an emulator or another JSON-API endpoint (`http://127.0.0.1:4443`). Default:
    /// `STORAGE_EMULATOR_HOST` when set, else `https://storage.googleapis.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Which credentials to use. Default: Application Default Credentials against Google, none
    /// against an emulator. Accepted: the service-account key JSON as a string (the original
    /// system's `credentials` field) or as an object, `{ "file": "key.json" }` (relative to the
    /// config file's folder), `"default"` (Application Default Credentials even on a custom
    /// endpoint) and `"anonymous"` (public buckets, emulators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<GcsCredentials>,
    /// The size of an upload's chunks in MiB (default 16, at most 256; rounded to GCS's
    /// 256 KiB granularity). A writer holds at most two chunks, so memory per open output is
    /// twice this. Larger chunks mean fewer requests: worth it on high-latency links (and on
    /// fake-gcs-server, whose cost per chunk grows with the bytes already uploaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_chunk_mib: Option<u32>,
}

/// The largest `upload_chunk_mib`.
pub const MAX_UPLOAD_CHUNK_MIB: u32 = 256;

/// Where the connector's credentials come from. `Debug` and error messages never show a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcsCredentials {
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS` (a key file),
    /// `GOOGLE_APPLICATION_CREDENTIALS_JSON`, the gcloud CLI's
    /// `~/.config/gcloud/application_default_credentials.json`, then the metadata server of a
    /// Google Cloud VM, Cloud Run or GKE workload.
    Default,
    /// No credentials: public buckets and emulators.
    Anonymous,
    /// A credentials JSON given inline: a service-account key (`"type": "service_account"`) or
    /// the gcloud CLI's user credentials (`"type": "authorized_user"`).
    Json(Sensitive<String>),
    /// A credentials JSON file, as Google's console downloads it. A relative path is resolved
    /// against the config file's folder.
    File(PathBuf),
}

impl GcsConfig {
    /// A config for `bucket` with everything else from the environment.
    pub fn new(bucket: impl Into<String>) -> Self {
        GcsConfig {
            bucket: bucket.into(),
            endpoint: None,
            credentials: None,
            upload_chunk_mib: None,
        }
    }

    /// Creates the store: resolves the endpoint and reads a credentials file (no request is sent;
    /// a token is fetched on the first request).
    pub async fn build_store(&self, ctx: &BuildContext) -> Result<GcsStore> {
        self.validate()?;
        GcsStore::connect(self, ctx).await
    }

    /// The endpoint in use and whether it is Google's: `endpoint`, else `STORAGE_EMULATOR_HOST`,
    /// else Google.
    pub(crate) fn resolve_endpoint(&self) -> Result<(String, bool)> {
        if let Some(e) = &self.endpoint {
            return Ok((e.trim_end_matches('/').to_string(), is_google(e)));
        }
        match std::env::var(EMULATOR_HOST_VAR) {
            Ok(host) if !host.trim().is_empty() => {
                let host = host.trim();
                let url = if host.contains("://") {
                    host.to_string()
                } else {
                    format!("http://{host}")
                };
                validate_endpoint(&url).map_err(|_| {
                    Error::config(format!(
                        "gcs connector: {EMULATOR_HOST_VAR} must be host:port or an http(s):// \
                         URL (like \"127.0.0.1:4443\")"
                    ))
                })?;
                Ok((url.trim_end_matches('/').to_string(), false))
            }
            _ => Ok((GOOGLE_ENDPOINT.to_string(), true)),
        }
    }
}

fn is_google(endpoint: &str) -> bool {
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    endpoint.starts_with("https://")
        && (host == "googleapis.com" || host.ends_with(".googleapis.com"))
}

keylink_core::register!(keylink_core::registry::Component {
    kind: keylink_core::registry::Kind::Connector,
    name: "gcs",
    description: "Google Cloud Storage buckets (and fake-gcs-server)",
    example: r#"{ "type": "gcs", "bucket": "my-lake" }"#,
    schemes: &["gs"],
    from_url: Some(|bucket, _| Ok(serde_json::json!({ "type": "gcs", "bucket": bucket }))),
    schema: keylink_core::schema::of::<GcsConfig>,
});

#[async_trait]
#[typetag::serde(name = "gcs")]
impl ConnectorConfig for GcsConfig {
    fn validate(&self) -> Result<()> {
        validate_bucket(&self.bucket)?;
        if let Some(endpoint) = &self.endpoint {
            validate_endpoint(endpoint)?;
        }
        if let Some(mib) = self.upload_chunk_mib
            && !(1..=MAX_UPLOAD_CHUNK_MIB).contains(&mib)
        {
            return Err(Error::config(format!(
                "gcs connector: 'upload_chunk_mib' is {mib}; it must be 1 to \
                 {MAX_UPLOAD_CHUNK_MIB} (MiB)"
            )));
        }
        match &self.credentials {
            Some(GcsCredentials::Json(json)) => {
                check_credentials_json(json.expose())
                    .map_err(|why| Error::config(format!("gcs connector: 'credentials': {why}")))?;
            }
            Some(GcsCredentials::File(path)) if path.as_os_str().is_empty() => {
                return Err(Error::config(
                    "gcs connector: 'credentials.file' must not be empty",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    async fn build_source(&self, ctx: &BuildContext) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(self.build_store(ctx).await?))
    }

    async fn build_sink(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(self.build_store(ctx).await?))
    }

    /// `gs://bucket/name`. The endpoint is deliberately not part of the location (as for S3): two
    /// connectors on a bucket of the same name are treated as one store, so a job can never
    /// write over its input through a second connector that reaches the same store by another
    /// URL.
    fn location(&self, _ctx: &BuildContext, path: &str) -> Result<ObjectLocation> {
        validate_bucket(&self.bucket)?;
        Ok(ObjectLocation::new("gs", self.bucket.clone(), path))
    }
}

/// Bucket names (Google's rules): 3–63 characters of `a-z 0-9 - _ .` (up to 222 with dots, each
/// dot-separated part at most 63), starting and ending with a letter or digit.
fn validate_bucket(bucket: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::config(format!(
            "gcs connector: 'bucket' {bucket:?} is not a bucket name: {why}"
        )))
    };
    if bucket.starts_with("gs://") || bucket.contains('/') {
        return bad("give the bucket's name alone (no gs:// and no '/'; paths go in the job)");
    }
    let max = if bucket.contains('.') { 222 } else { 63 };
    if !(3..=max).contains(&bucket.len()) {
        return bad("it must have 3 to 63 characters (222 with dots)");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return bad("only lower-case letters, digits, '-', '_' and '.' are allowed");
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !edge_ok(bucket.bytes().next()) || !edge_ok(bucket.bytes().last()) {
        return bad("it must start and end with a letter or a digit");
    }
    if bucket
        .split('.')
        .any(|part| part.is_empty() || part.len() > 63)
    {
        return bad("each dot-separated part must have 1 to 63 characters");
    }
    Ok(())
}

/// An endpoint must be an `http://` or `https://` URL with a host.
fn validate_endpoint(endpoint: &str) -> Result<()> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(h)
            if !h.is_empty()
                && !h.contains('@')
                && !endpoint.contains(char::is_whitespace)
                && !endpoint.contains(['?', '#']) =>
        {
            Ok(())
        }
        // Not echoed: a URL with user info may carry a password.
        _ => Err(Error::config(
            "gcs connector: 'endpoint' must be an http:// or https:// URL with a host and without \
             user info or query (like \"http://127.0.0.1:4443\")",
        )),
    }
}

// -------------------------------------------------------------------------- credentials parsing

/// The credential types the client can use (the JSON's `type`) and the fields each needs.
const CREDENTIAL_TYPES: [(&str, &[&str]); 2] = [
    ("service_account", &["client_email", "private_key"]),
    (
        "authorized_user",
        &["client_id", "client_secret", "refresh_token"],
    ),
];

/// Checks a credentials JSON without quoting any of it: an object with a known `type` and the
/// fields that type needs, as non-empty strings.
pub(crate) fn check_credentials_json(json: &str) -> std::result::Result<(), String> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        format!(
            "the credentials are not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(map) = value else {
        return Err("the credentials JSON must be an object (a service-account key)".into());
    };
    let kind = match map.get("type") {
        Some(Value::String(t)) => t.as_str(),
        _ => return Err("the credentials JSON has no \"type\" (\"service_account\")".into()),
    };
    let Some((_, needed)) = CREDENTIAL_TYPES.iter().find(|(t, _)| *t == kind) else {
        // The type is a fixed word, not a secret; still, only known words are echoed.
        return Err(format!(
            "credentials of type {:?} are not supported (use a service-account key, \
             \"type\": \"service_account\", or the gcloud CLI's \"authorized_user\")",
            if kind.len() <= 32 && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                kind
            } else {
                "…"
            }
        ));
    };
    for field in *needed {
        match map.get(*field) {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            Some(Value::String(_)) => {
                return Err(format!("the credentials field \"{field}\" is empty"));
            }
            Some(_) => {
                return Err(format!(
                    "the credentials field \"{field}\" must be a string"
                ));
            }
            None => return Err(format!("the credentials have no \"{field}\" ({kind})")),
        }
    }
    Ok(())
}

/// What `parse_credentials` accepts.
impl schemars::JsonSchema for GcsCredentials {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GcsCredentials".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`\"default\"` (Application Default Credentials), `\"anonymous\"`, \
                the service-account key JSON (a string or an object) or `{ \"file\": \"key.json\" }`.",
            "anyOf": [
                { "enum": ["default", "anonymous"] },
                {
                    "type": "string",
                    "pattern": "^\\s*\\{",
                    "description": "The credentials JSON as a string.",
                    "contentMediaType": "application/json",
                },
                {
                    "type": "object",
                    "properties": { "file": { "type": "string", "description": "A credentials JSON file, relative to the config file's folder." } },
                    "required": ["file"],
                    "additionalProperties": false,
                },
                {
                    "type": "object",
                    "description": "The credentials JSON (`\"type\": \"service_account\"` or `\"authorized_user\"`).",
                    "properties": { "type": { "enum": ["service_account", "authorized_user"] } },
                    "required": ["type"],
                    "not": { "required": ["file"] },
                },
            ],
        })
    }
}

impl<'de> Deserialize<'de> for GcsCredentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Parsed by hand from a generic value so that no error message can quote a secret
        // (serde's "invalid type: string \"…\"" would).
        let value = Value::deserialize(d)?;
        parse_credentials(value).map_err(serde::de::Error::custom)
    }
}

fn parse_credentials(value: Value) -> std::result::Result<GcsCredentials, String> {
    const SHAPES: &str = "credentials must be the service-account key JSON (a string or an \
                          object), {\"file\": \"key.json\"}, \"default\" or \"anonymous\"";
    match value {
        Value::String(s) => {
            let s = Sensitive::new(s);
            match s.expose().trim() {
                "default" => Ok(GcsCredentials::Default),
                "anonymous" => Ok(GcsCredentials::Anonymous),
                t if t.starts_with('{') => {
                    check_credentials_json(t)?;
                    Ok(GcsCredentials::Json(s))
                }
                _ => Err(SHAPES.into()),
            }
        }
        Value::Object(map) if map.contains_key("file") => {
            if let Some(other) = map.keys().find(|k| *k != "file") {
                return Err(format!(
                    "unknown credentials field `{other}` next to `file`"
                ));
            }
            match map.get("file") {
                Some(Value::String(p)) => Ok(GcsCredentials::File(PathBuf::from(p))),
                _ => Err("credentials field `file` must be a path (a string)".into()),
            }
        }
        Value::Object(map) => {
            let json = Sensitive::new(Value::Object(map).to_string());
            check_credentials_json(json.expose())?;
            Ok(GcsCredentials::Json(json))
        }
        _ => Err(SHAPES.into()),
    }
}

impl Serialize for GcsCredentials {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            GcsCredentials::Default => s.serialize_str("default"),
            GcsCredentials::Anonymous => s.serialize_str("anonymous"),
            // the original system's shape: the key JSON as a string
            GcsCredentials::Json(json) => s.serialize_str(json.expose()),
            GcsCredentials::File(path) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("file", path)?;
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\\nMIIEvQ-SECRET-KEY-MATERIAL\\n-----END PRIVATE KEY-----\\n";
    const EMAIL: &str = "etl@my-project.iam.gserviceaccount.com";

    fn key_json() -> String {
        format!(
            r#"{{"type":"service_account","project_id":"my-project","private_key_id":"abc123",
                "private_key":"{KEY}","client_email":"{EMAIL}","client_id":"1234",
                "token_uri":"https://oauth2.googleapis.com/token"}}"#
        )
    }

    fn parse(json: &str) -> std::result::Result<GcsConfig, String> {
        let c: Box<dyn ConnectorConfig> = serde_json::from_str(json).map_err(|e| e.to_string())?;
        // serializes with its tag and reads back the same
        let mut any = serde_json::to_value(&*c).unwrap();
        let again: Box<dyn ConnectorConfig> = serde_json::from_value(any.clone()).unwrap();
        assert_eq!(format!("{again:?}"), format!("{c:?}"));
        any.as_object_mut().unwrap().remove("type");
        Ok(serde_json::from_value(any).unwrap())
    }

    #[test]
    fn minimal_and_full_configs_parse() {
        let c = parse(r#"{"type":"gcs","bucket":"my-lake"}"#).unwrap();
        assert_eq!(c, GcsConfig::new("my-lake"));
        c.validate().unwrap();

        let c = parse(
            r#"{"type":"gcs","bucket_name":"my-lake","endpoint":"http://127.0.0.1:4443",
                          "credentials":"anonymous"}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:4443"));
        assert_eq!(c.credentials, Some(GcsCredentials::Anonymous));

        let c = parse(r#"{"type":"gcs","bucket":"b-1","credentials":{"file":"keys/sa.json"}}"#)
            .unwrap();
        assert_eq!(
            c.credentials,
            Some(GcsCredentials::File(PathBuf::from("keys/sa.json")))
        );
        let c = parse(r#"{"type":"gcs","bucket":"b-1","credentials":"default"}"#).unwrap();
        assert_eq!(c.credentials, Some(GcsCredentials::Default));
    }

    #[test]
    fn the_original_systems_credentials_shape_parses() {
        // the service-account key JSON as a string (STRM's GoogleCloudStorageBucketLocation),
        // and as an object (handier in YAML)
        let as_string = serde_json::to_string(&key_json()).unwrap();
        for creds in [as_string, key_json()] {
            let c = parse(&format!(
                r#"{{"type":"gcs","bucket_name":"b-1","credentials":{creds}}}"#
            ))
            .unwrap();
            c.validate().unwrap();
            let Some(GcsCredentials::Json(json)) = &c.credentials else {
                panic!("{:?}", c.credentials)
            };
            let v: Value = serde_json::from_str(json.expose()).unwrap();
            assert_eq!(v["client_email"], EMAIL);
        }
        let yaml = format!(
            "type: gcs\nbucket: b-1\ncredentials:\n  type: service_account\n  client_email: \
             {EMAIL}\n  private_key: \"{KEY}\"\n"
        );
        let c: Box<dyn ConnectorConfig> = serde_norway::from_str(&yaml).unwrap();
        c.validate().unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("SECRET-KEY") && !shown.contains(EMAIL),
            "{shown}"
        );
    }

    #[test]
    fn unknown_and_misspelt_fields_are_refused() {
        for (json, expect) in [
            (
                r#"{"type":"gcs","bucket":"b-1","endpiont":"x"}"#,
                "endpiont",
            ),
            (
                r#"{"type":"gcs","bucket":"b-1","credentials":{"file":"a","x":1}}"#,
                "`x`",
            ),
            (
                r#"{"type":"gcs","bucket":"b-1","credentials":{"file":1}}"#,
                "`file`",
            ),
            (
                r#"{"type":"gcs","bucket":"b-1","credentials":"anon"}"#,
                "\"anonymous\"",
            ),
            (
                r#"{"type":"gcs","bucket":"b-1","credentials":42}"#,
                "service-account key",
            ),
            (
                r#"{"type":"gcs","bucket":"b-1","credentials":{"type":"service_account","client_email":"e"}}"#,
                "\"private_key\"",
            ),
            (
                r#"{"type":"gcs","bucket":"b-1","credentials":{"type":"external_account"}}"#,
                "not supported",
            ),
            (
                r#"{"type":"gcs","bucket":"b-1","credentials":{"private_key":"k"}}"#,
                "\"type\"",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(expect), "{json}: {e}");
        }
    }

    #[test]
    fn secrets_never_show() {
        let as_string = serde_json::to_string(&key_json()).unwrap();
        for creds in [as_string, key_json()] {
            let json = format!(r#"{{"type":"gcs","bucket":"b-1","credentials":{creds}}}"#);
            let c: Box<dyn ConnectorConfig> = serde_json::from_str(&json).unwrap();
            let shown = format!("{c:?} {c:#?}");
            for secret in ["SECRET-KEY", EMAIL, "abc123"] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(shown.contains("REDACTED"), "{shown}");
        }
        // errors about credentials never quote them: broken JSON, wrong types, a secret where a
        // keyword is expected
        let bad = [
            r#"{"type":"gcs","bucket":"b-1","credentials":"{\"type\": SECRET-KEY"}"#.to_string(),
            r#"{"type":"gcs","bucket":"b-1","credentials":"SECRET-KEY"}"#.to_string(),
            r#"{"type":"gcs","bucket":"b-1","credentials":{"type":"service_account","client_email":"e","private_key":["SECRET-KEY"]}}"#.to_string(),
            r#"{"type":"gcs","bucket":"b-1","credentials":{"type":"SECRET-KEY-TYPE-THAT-IS-LONG-AND-WEIRD!"}}"#.to_string(),
            r#"{"type":"gcs","bucket":"b-1","credentials":["SECRET-KEY"]}"#.to_string(),
        ];
        for json in &bad {
            let e = serde_json::from_str::<Box<dyn ConnectorConfig>>(json)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("SECRET-KEY"), "{e}");
        }
        // validation errors name the field, not the value
        let mut c = GcsConfig::new("b-1");
        c.credentials = Some(GcsCredentials::Json(Sensitive::new(format!(
            r#"{{"type":"service_account","client_email":"{EMAIL}","private_key":"  "}}"#
        ))));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("private_key") && !e.contains(EMAIL), "{e}");
        // an endpoint with a password in it is not echoed
        let mut c = GcsConfig::new("b-1");
        c.endpoint = Some("http://user:SECRET-KEY@host:4443".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(!e.contains("SECRET-KEY"), "{e}");
    }

    #[test]
    fn validation_names_the_setting() {
        for b in ["abc", "my-lake", "my.lake.2024", "a_1", "0ab"] {
            GcsConfig::new(b).validate().unwrap();
        }
        for (b, why) in [
            ("ab", "3 to 63"),
            ("gs://my-lake", "no gs://"),
            ("my-lake/raw", "'/'"),
            ("-lake", "start and end"),
            ("lake_", "start and end"),
            ("my..lake", "dot-separated"),
            ("My-Lake", "lower-case"),
            ("my lake", "lower-case"),
            ("", "3 to 63"),
        ] {
            let e = GcsConfig::new(b).validate().unwrap_err();
            assert_eq!(e.kind(), keylink_core::ErrorKind::Config);
            assert!(
                e.to_string().contains("'bucket'") && e.to_string().contains(why),
                "{b}: {e}"
            );
        }
        let mut c = GcsConfig::new("my-lake");
        for bad in [
            "127.0.0.1:4443",
            "ftp://host",
            "http://",
            "http://a b",
            "http://h/?x=1",
        ] {
            c.endpoint = Some(bad.into());
            assert!(
                c.validate().unwrap_err().to_string().contains("'endpoint'"),
                "{bad}"
            );
        }
        c.endpoint = Some("https://storage.example.com:8443/".into());
        c.validate().unwrap();
        c.credentials = Some(GcsCredentials::File(PathBuf::new()));
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("credentials.file")
        );
    }

    #[test]
    fn upload_chunk_size_is_bounded() {
        let parse = |yaml: &str| serde_norway::from_str::<GcsConfig>(yaml).unwrap();
        let c = parse("{ bucket: my-lake, upload_chunk_mib: 40 }");
        assert_eq!(c.upload_chunk_mib, Some(40));
        c.validate().unwrap();
        for bad in [0, MAX_UPLOAD_CHUNK_MIB + 1] {
            let e = parse(&format!("{{ bucket: my-lake, upload_chunk_mib: {bad} }}"))
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains("upload_chunk_mib"), "{e}");
        }
        // misspelt: refused, not ignored
        assert!(serde_norway::from_str::<GcsConfig>("{ bucket: b, chunk_mib: 40 }").is_err());
    }

    #[test]
    fn google_endpoints_are_recognised() {
        assert!(is_google("https://storage.googleapis.com"));
        assert!(is_google("https://storage.googleapis.com:443/"));
        assert!(is_google("https://private.p.googleapis.com"));
        assert!(!is_google("http://storage.googleapis.com"));
        assert!(!is_google("https://googleapis.com.evil.example"));
        assert!(!is_google("http://127.0.0.1:4443"));
    }

    #[test]
    fn locations_are_gs_bucket_name() {
        let c = GcsConfig::new("my-lake");
        let l = c.location(&BuildContext::default(), "out/a.csv").unwrap();
        assert_eq!(l, ObjectLocation::new("gs", "my-lake", "out/a.csv"));
        assert_eq!(l.to_string(), "gs://my-lake/out/a.csv");
        // the endpoint is not part of the location
        let mut e = GcsConfig::new("my-lake");
        e.endpoint = Some("http://127.0.0.1:4443".into());
        assert_eq!(
            e.location(&BuildContext::default(), "out/a.csv").unwrap(),
            l
        );
    }
}
