//! The connector's configuration: `{ "type": "s3", "bucket": …, … }`, checked without I/O.

use std::sync::Arc;

use keylink_core::connector::{BuildContext, ConnectorConfig, ObjectLocation, Sink, Source};
use keylink_core::{Error, Result, Sensitive, async_trait, typetag};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::store::S3Store;

/// Configuration of the S3 connector:
///
/// ```json
/// { "type": "s3", "bucket": "my-lake", "region": "eu-west-1" }
/// ```
///
/// Everything but `bucket` is optional: the region, the endpoint and the credentials come from the
/// standard AWS chain (environment, shared config and credentials files, web identity, ECS and
/// EC2 instance metadata) unless given here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = |s: &mut schemars::Schema| keylink_core::schema::with_alias(s, "bucket", "bucket_name"))]
pub struct S3Config {
    /// The bucket holding the objects (`bucket_name` is accepted too, as in the original
    /// system's bucket locations). Object paths are keys in this bucket.
    #[serde(alias = "bucket_name")]
    pub bucket: String,
    /// The bucket's region (`eu-west-1`). Default: the standard chain (`AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, the profile's `region`, instance metadata). A region is required,
    /// also for S3-compatible stores (most accept `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The URL of an S3-compatible store or emulator (`http://127.0.0.1:9000`). Default: the
    /// standard `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` variables or the profile's
    /// `endpoint_url`, else AWS itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Address buckets as `https://host/bucket/key` instead of `https://bucket.host/key`, as
    /// most S3-compatible stores and emulators need. Default: on when a custom endpoint is in use
    /// (from `endpoint` or the environment), off for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Explicit credentials. Default: the standard AWS credentials chain. Accepted shapes:
    /// `{ "access_key_id": …, "secret_access_key": …, "session_token": … }` (the token is
    /// optional), the AWS CLI's `{ "AccessKey": { "AccessKeyId": …, "SecretAccessKey": … } }`,
    /// and that JSON as a string (the original system's `credentials` field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<S3Credentials>,
    /// A role to assume (`arn:aws:iam::123456789012:role/keylink`) with STS, starting from the
    /// credentials above (or the standard chain): for buckets in another account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assume_role_arn: Option<String>,
    /// The session name of the assumed role (2–64 characters of `A-Za-z0-9+=,.@_-`). Default:
    /// `keylink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assume_role_session_name: Option<String>,
}

/// Explicit access keys. `Debug`, `Display` and error messages never show them.
///
/// Deserializes from any of the shapes [`S3Config::credentials`] accepts; serializes as
/// `{ "access_key_id", "secret_access_key", "session_token"? }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct S3Credentials {
    /// The access key id (`AKIA…`).
    pub access_key_id: Sensitive<String>,
    /// The secret access key.
    pub secret_access_key: Sensitive<String>,
    /// A session token, for temporary credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_token: Option<Sensitive<String>>,
}

impl S3Config {
    /// A config for `bucket` with everything else from the environment.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            region: None,
            endpoint: None,
            force_path_style: None,
            credentials: None,
            assume_role_arn: None,
            assume_role_session_name: None,
        }
    }

    /// Creates the store: resolves region, endpoint and credentials (no request is sent; the
    /// credentials chain is consulted on the first request).
    pub async fn build_store(&self) -> Result<S3Store> {
        self.validate()?;
        S3Store::connect(self).await
    }
}

keylink_core::register!(keylink_core::registry::Component {
    kind: keylink_core::registry::Kind::Connector,
    name: "s3",
    description: "Amazon S3 and S3-compatible stores (MinIO, moto, R2)",
    example: r#"{ "type": "s3", "bucket": "my-lake" }"#,
    schemes: &["s3"],
    from_url: Some(|bucket, _| Ok(serde_json::json!({ "type": "s3", "bucket": bucket }))),
    schema: keylink_core::schema::of::<S3Config>,
});

#[async_trait]
#[typetag::serde(name = "s3")]
impl ConnectorConfig for S3Config {
    fn validate(&self) -> Result<()> {
        validate_bucket(&self.bucket)?;
        if let Some(region) = &self.region {
            let ok = !region.is_empty()
                && region.len() <= 64
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(Error::config(format!(
                    "s3 connector: 'region' {region:?} is not a region name (like \"eu-west-1\")"
                )));
            }
        }
        if let Some(endpoint) = &self.endpoint {
            validate_endpoint(endpoint)?;
        }
        if let Some(c) = &self.credentials {
            for (field, value) in [
                ("access_key_id", c.access_key_id.expose()),
                ("secret_access_key", c.secret_access_key.expose()),
            ] {
                if value.trim().is_empty() {
                    return Err(Error::config(format!(
                        "s3 connector: 'credentials.{field}' must not be empty"
                    )));
                }
            }
        }
        if let Some(arn) = &self.assume_role_arn
            && (!arn.starts_with("arn:") || arn.split(':').count() < 6 || arn.contains(' '))
        {
            return Err(Error::config(format!(
                "s3 connector: 'assume_role_arn' {arn:?} is not a role ARN (like \
                 \"arn:aws:iam::123456789012:role/keylink\")"
            )));
        }
        if let Some(name) = &self.assume_role_session_name {
            if self.assume_role_arn.is_none() {
                return Err(Error::config(
                    "s3 connector: 'assume_role_session_name' needs 'assume_role_arn'",
                ));
            }
            let ok = (2..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
            if !ok {
                return Err(Error::config(format!(
                    "s3 connector: 'assume_role_session_name' {name:?} must be 2-64 characters \
                     of A-Z a-z 0-9 + = , . @ _ -"
                )));
            }
        }
        Ok(())
    }

    async fn build_source(&self, _ctx: &BuildContext) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(self.build_store().await?))
    }

    async fn build_sink(&self, _ctx: &BuildContext) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(self.build_store().await?))
    }

    /// `s3://bucket/key`. The endpoint is deliberately not part of the location: two connectors
    /// on a bucket of the same name are treated as one store, so a job can never write over its
    /// input through a second connector that reaches the same store by another URL (the cost: a
    /// job copying between two stores with equal bucket names and keys is refused).
    fn location(&self, _ctx: &BuildContext, path: &str) -> Result<ObjectLocation> {
        validate_bucket(&self.bucket)?;
        Ok(ObjectLocation::new("s3", self.bucket.clone(), path))
    }
}

/// Bucket names: 3–63 characters of `a-z 0-9 . -` starting and ending with a letter or digit
/// (AWS's rules), with the upper-case letters and `_` of legacy buckets and S3-compatible stores
/// tolerated (up to 255 characters).
fn validate_bucket(bucket: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::config(format!(
            "s3 connector: 'bucket' {bucket:?} is not a bucket name: {why}"
        )))
    };
    if bucket.starts_with("s3://") || bucket.contains('/') {
        return bad("give the bucket's name alone (no s3:// and no '/'; paths go in the job)");
    }
    if !(3..=255).contains(&bucket.len()) {
        return bad("it must have 3 to 63 characters (255 for legacy buckets)");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return bad("only letters, digits, '.', '-' (and '_') are allowed");
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !edge_ok(bucket.bytes().next()) || !edge_ok(bucket.bytes().last()) {
        return bad("it must start and end with a letter or a digit");
    }
    if bucket.contains("..") {
        return bad("it must not contain '..'");
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
        Some(h) if !h.is_empty() && !h.contains('@') && !endpoint.contains(char::is_whitespace) => {
            Ok(())
        }
        // Not echoed: a URL with user info may carry a password.
        _ => Err(Error::config(
            "s3 connector: 'endpoint' must be an http:// or https:// URL with a host and without \
             user info (like \"http://127.0.0.1:9000\")",
        )),
    }
}

// -------------------------------------------------------------------------- credentials parsing

/// What `parse_credentials` accepts.
impl schemars::JsonSchema for S3Credentials {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "S3Credentials".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Explicit access keys: { access_key_id, secret_access_key, \
                session_token? }, the AWS CLI's { AccessKey: { AccessKeyId, SecretAccessKey } }, \
                or that JSON as a string.",
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        "access_key_id": { "type": "string", "description": "The access key id (`AKIA…`)." },
                        "secret_access_key": { "type": "string", "description": "The secret access key." },
                        "session_token": { "type": ["string", "null"], "description": "A session token, for temporary credentials." },
                    },
                    "required": ["access_key_id", "secret_access_key"],
                    "additionalProperties": false,
                },
                {
                    "type": "object",
                    "properties": {
                        "AccessKey": {
                            "type": "object",
                            "properties": {
                                "AccessKeyId": { "type": "string" },
                                "SecretAccessKey": { "type": "string" },
                                "SessionToken": { "type": ["string", "null"] },
                                "UserName": true,
                                "Status": true,
                                "CreateDate": true,
                            },
                            "required": ["AccessKeyId", "SecretAccessKey"],
                            "additionalProperties": false,
                        },
                    },
                    "required": ["AccessKey"],
                    "additionalProperties": false,
                },
                {
                    "type": "string",
                    "description": "The AWS CLI's `aws iam create-access-key` JSON as a string.",
                    "contentMediaType": "application/json",
                },
            ],
        })
    }
}

impl<'de> Deserialize<'de> for S3Credentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Parsed by hand from a generic value so that no error message can quote a secret
        // (serde's "invalid type: string \"…\"" would).
        let value = Value::deserialize(d)?;
        parse_credentials(value).map_err(serde::de::Error::custom)
    }
}

/// The fields of the AWS CLI's `AccessKey` object that are not credentials (`aws iam
/// create-access-key` prints them): accepted and ignored.
const AWS_CLI_INFO_FIELDS: [&str; 3] = ["UserName", "Status", "CreateDate"];

fn parse_credentials(value: Value) -> std::result::Result<S3Credentials, String> {
    match value {
        Value::String(json) => {
            let json = Sensitive::new(json);
            let inner: Value = serde_json::from_str(json.expose()).map_err(|e| {
                format!(
                    "the credentials string is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                )
            })?;
            match inner {
                Value::Object(_) => parse_credentials(inner),
                _ => Err("the credentials string must hold a JSON object \
                          ({\"AccessKey\": {\"AccessKeyId\": …, \"SecretAccessKey\": …}})"
                    .into()),
            }
        }
        Value::Object(mut map) => {
            if let Some(access_key) = map.remove("AccessKey") {
                if let Some(other) = map.keys().next() {
                    return Err(format!(
                        "unknown credentials field `{other}` next to `AccessKey`"
                    ));
                }
                let Value::Object(mut ak) = access_key else {
                    return Err("`AccessKey` must be an object".into());
                };
                for f in AWS_CLI_INFO_FIELDS {
                    ak.remove(f);
                }
                let creds = S3Credentials {
                    access_key_id: take_string(&mut ak, "AccessKey.AccessKeyId", "AccessKeyId")?,
                    secret_access_key: take_string(
                        &mut ak,
                        "AccessKey.SecretAccessKey",
                        "SecretAccessKey",
                    )?,
                    session_token: take_optional_string(
                        &mut ak,
                        "AccessKey.SessionToken",
                        "SessionToken",
                    )?,
                };
                if let Some(other) = ak.keys().next() {
                    return Err(format!(
                        "unknown credentials field `AccessKey.{other}` (expected AccessKeyId, \
                         SecretAccessKey, SessionToken)"
                    ));
                }
                Ok(creds)
            } else {
                let creds = S3Credentials {
                    access_key_id: take_string(&mut map, "access_key_id", "access_key_id")?,
                    secret_access_key: take_string(
                        &mut map,
                        "secret_access_key",
                        "secret_access_key",
                    )?,
                    session_token: take_optional_string(
                        &mut map,
                        "session_token",
                        "session_token",
                    )?,
                };
                if let Some(other) = map.keys().next() {
                    return Err(format!(
                        "unknown credentials field `{other}` (expected access_key_id, \
                         secret_access_key, session_token, or the AWS CLI's AccessKey object)"
                    ));
                }
                Ok(creds)
            }
        }
        _ => Err("credentials must be an object or a JSON string".into()),
    }
}

fn take_optional_string(
    map: &mut serde_json::Map<String, Value>,
    path: &str,
    field: &str,
) -> std::result::Result<Option<Sensitive<String>>, String> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Sensitive::new(s))),
        Some(_) => Err(format!("credentials field `{path}` must be a string")),
    }
}

fn take_string(
    map: &mut serde_json::Map<String, Value>,
    path: &str,
    field: &str,
) -> std::result::Result<Sensitive<String>, String> {
    take_optional_string(map, path, field)?
        .ok_or_else(|| format!("missing credentials field `{path}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-SECRET";
    const KEY_ID: &str = "AKIAKEYLINKTESTKEYID";
    const TOKEN: &str = "FwoGZX-session-token-SECRET";

    fn parse(json: &str) -> std::result::Result<S3Config, String> {
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
        let c = parse(r#"{"type":"s3","bucket":"my-lake"}"#).unwrap();
        assert_eq!(c, S3Config::new("my-lake"));
        c.validate().unwrap();

        let c = parse(&format!(
            r#"{{"type":"s3","bucket_name":"my-lake","region":"eu-west-1",
                "endpoint":"http://127.0.0.1:9000","force_path_style":true,
                "credentials":{{"access_key_id":"{KEY_ID}","secret_access_key":"{SECRET}",
                                "session_token":"{TOKEN}"}},
                "assume_role_arn":"arn:aws:iam::123456789012:role/keylink",
                "assume_role_session_name":"nightly-run"}}"#
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.bucket, "my-lake");
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.force_path_style, Some(true));
        let creds = c.credentials.as_ref().unwrap();
        assert_eq!(creds.access_key_id.expose(), KEY_ID);
        assert_eq!(creds.secret_access_key.expose(), SECRET);
        assert_eq!(creds.session_token.as_ref().unwrap().expose(), TOKEN);
    }

    #[test]
    fn the_original_systems_credentials_shapes_parse() {
        // the AWS CLI's `create-access-key` output, as an object and as a JSON string
        let cli = format!(
            r#"{{"AccessKey":{{"UserName":"etl","AccessKeyId":"{KEY_ID}","Status":"Active",
                 "SecretAccessKey":"{SECRET}","CreateDate":"2024-01-01T00:00:00Z"}}}}"#
        );
        let as_string = serde_json::to_string(&cli).unwrap();
        for creds in [cli.clone(), as_string] {
            let c = parse(&format!(
                r#"{{"type":"s3","bucket":"b-1","credentials":{creds}}}"#
            ))
            .unwrap();
            let got = c.credentials.unwrap();
            assert_eq!(got.access_key_id.expose(), KEY_ID);
            assert_eq!(got.secret_access_key.expose(), SECRET);
            assert!(got.session_token.is_none());
        }
        // and from YAML, as in keylink.yaml
        let yaml = format!(
            "type: s3\nbucket: b-1\ncredentials:\n  AccessKey: {{ AccessKeyId: {KEY_ID}, \
             SecretAccessKey: {SECRET} }}\n"
        );
        let c: Box<dyn ConnectorConfig> = serde_norway::from_str(&yaml).unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains(SECRET) && !shown.contains(KEY_ID),
            "{shown}"
        );
    }

    #[test]
    fn unknown_and_misspelt_fields_are_refused() {
        for (json, expect) in [
            (r#"{"type":"s3","bucket":"b-1","regoin":"x"}"#, "regoin"),
            (
                r#"{"type":"s3","bucket":"b-1","credentials":{"access_key":"a","secret_access_key":"s"}}"#,
                "access_key_id",
            ),
            (
                r#"{"type":"s3","bucket":"b-1","credentials":{"access_key_id":"a","secret_access_key":"s","extra":1}}"#,
                "extra",
            ),
            (
                r#"{"type":"s3","bucket":"b-1","credentials":{"AccessKey":{"AccessKeyId":"a","SecretAccessKey":"s","Nope":1}}}"#,
                "AccessKey.Nope",
            ),
            (
                r#"{"type":"s3","bucket":"b-1","credentials":{"AccessKey":{"AccessKeyId":"a"}}}"#,
                "AccessKey.SecretAccessKey",
            ),
            (r#"{"type":"s3","bucket":"b-1","credentials":42}"#, "object"),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(expect), "{json}: {e}");
        }
    }

    #[test]
    fn secrets_never_show() {
        let configs = [
            format!(
                r#"{{"type":"s3","bucket":"b-1","credentials":{{"access_key_id":"{KEY_ID}","secret_access_key":"{SECRET}","session_token":"{TOKEN}"}}}}"#
            ),
            format!(
                r#"{{"type":"s3","bucket":"b-1","credentials":{{"AccessKey":{{"AccessKeyId":"{KEY_ID}","SecretAccessKey":"{SECRET}"}}}}}}"#
            ),
        ];
        for json in &configs {
            let c: Box<dyn ConnectorConfig> = serde_json::from_str(json).unwrap();
            let shown = format!("{c:?} {c:#?}");
            for secret in [SECRET, KEY_ID, TOKEN] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(shown.contains("REDACTED"), "{shown}");
        }
        // errors about credentials never quote them: a secret where an object is expected, a
        // broken JSON string holding a secret, a secret of the wrong type
        let bad = [
            format!(r#"{{"type":"s3","bucket":"b-1","credentials":{{"AccessKey":"{SECRET}"}}}}"#),
            format!(r#"{{"type":"s3","bucket":"b-1","credentials":"{{\"AccessKey\": {SECRET}"}}"#),
            format!(r#"{{"type":"s3","bucket":"b-1","credentials":"{SECRET}"}}"#),
            format!(
                r#"{{"type":"s3","bucket":"b-1","credentials":{{"access_key_id":["{KEY_ID}"],"secret_access_key":"{SECRET}"}}}}"#
            ),
            format!(
                r#"{{"type":"s3","bucket":"b-1","credentials":{{"access_key_id":"{KEY_ID}","secret_access_key":{{"v":"{SECRET}"}}}}}}"#
            ),
        ];
        for json in &bad {
            let e = serde_json::from_str::<Box<dyn ConnectorConfig>>(json)
                .unwrap_err()
                .to_string();
            for secret in [SECRET, KEY_ID] {
                assert!(!e.contains(secret), "{e}");
            }
        }
        // validation errors name the field, not the value
        let mut c = S3Config::new("b-1");
        c.credentials = Some(S3Credentials {
            access_key_id: Sensitive::new(KEY_ID.into()),
            secret_access_key: Sensitive::new("  ".into()),
            session_token: None,
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("secret_access_key") && !e.contains(KEY_ID),
            "{e}"
        );
        // an endpoint with a password in it is not echoed
        let mut c = S3Config::new("b-1");
        c.endpoint = Some(format!("http://user:{SECRET}@host:9000"));
        let e = c.validate().unwrap_err().to_string();
        assert!(!e.contains(SECRET), "{e}");
    }

    #[test]
    fn validation_names_the_setting() {
        let ok = ["abc", "my-lake", "my.lake.2024", "a1b", "Legacy_Bucket"];
        for b in ok {
            S3Config::new(b).validate().unwrap();
        }
        for (b, why) in [
            ("ab", "3 to 63"),
            ("s3://my-lake", "no s3://"),
            ("my-lake/raw", "'/'"),
            ("-lake", "start and end"),
            ("lake-", "start and end"),
            ("my..lake", "'..'"),
            ("my lake", "only letters"),
            ("", "3 to 63"),
        ] {
            let e = S3Config::new(b).validate().unwrap_err();
            assert_eq!(e.kind(), keylink_core::ErrorKind::Config);
            assert!(
                e.to_string().contains("'bucket'") && e.to_string().contains(why),
                "{b}: {e}"
            );
        }
        let with = |f: &dyn Fn(&mut S3Config)| {
            let mut c = S3Config::new("my-lake");
            f(&mut c);
            c.validate().map_err(|e| e.to_string())
        };
        assert!(with(&|c| c.region = Some("eu-west-1".into())).is_ok());
        assert!(
            with(&|c| c.region = Some("EU West".into()))
                .unwrap_err()
                .contains("'region'")
        );
        assert!(with(&|c| c.endpoint = Some("https://s3.example.com:9000/".into())).is_ok());
        for bad in ["127.0.0.1:9000", "ftp://host", "http://", "http://a b"] {
            assert!(
                with(&|c| c.endpoint = Some(bad.into()))
                    .unwrap_err()
                    .contains("'endpoint'"),
                "{bad}"
            );
        }
        assert!(
            with(&|c| c.assume_role_arn = Some("role/keylink".into()))
                .unwrap_err()
                .contains("'assume_role_arn'")
        );
        assert!(
            with(&|c| c.assume_role_session_name = Some("x1".into()))
                .unwrap_err()
                .contains("needs 'assume_role_arn'")
        );
        assert!(
            with(&|c| {
                c.assume_role_arn = Some("arn:aws:iam::123456789012:role/k".into());
                c.assume_role_session_name = Some("bad name".into());
            })
            .unwrap_err()
            .contains("'assume_role_session_name'")
        );
    }
}
