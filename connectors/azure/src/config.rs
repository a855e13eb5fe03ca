//! The connector's configuration: `{ "type": "azure", "account": …, "container": …, … }`,
//! checked without I/O, and its resolution (with `AZURE_STORAGE_CONNECTION_STRING`) into a
//! service URL and a way to authenticate.

use std::sync::Arc;

use keylink_core::connector::{BuildContext, ConnectorConfig, ObjectLocation, Sink, Source};
use keylink_core::{Error, Result, Sensitive, async_trait, typetag};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::store::AzureStore;

/// The environment variable holding a storage connection string (Azure's standard one).
pub const CONNECTION_STRING_ENV: &str = "AZURE_STORAGE_CONNECTION_STRING";

/// Configuration of the Azure Blob Storage connector:
///
/// ```json
/// { "type": "azure", "account": "myacct", "container": "lake" }
/// ```
///
/// The original system's shape is accepted too: `storage_account_uri` for `endpoint`,
/// `container_name` for `container` and `client_secret_credential` for `credentials`.
///
/// Without `credentials`, `AZURE_STORAGE_CONNECTION_STRING` is used when set (its `AccountName`,
/// `AccountKey`, `SharedAccessSignature` and `BlobEndpoint`; the account and endpoint given here
/// win), else the Entra ID client secret of `AZURE_TENANT_ID` / `AZURE_CLIENT_ID` /
/// `AZURE_CLIENT_SECRET`, else the Azure CLI's login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = azure_aliases)]
pub struct AzureConfig {
    /// The storage account (`myacct`). Default: the connection string's `AccountName`, or the
    /// first label of the endpoint's host (`myacct.blob.core.windows.net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The container holding the blobs (3–63 characters of `a-z 0-9 -`). Object paths are blob
    /// names in it.
    #[serde(alias = "container_name")]
    pub container: String,
    /// The blob service URL (`https://myacct.blob.core.windows.net`, or an emulator's
    /// `http://127.0.0.1:10000/devstoreaccount1`). Default: the connection string's
    /// `BlobEndpoint`, else `https://<account>.blob.core.windows.net`.
    #[serde(
        default,
        alias = "storage_account_uri",
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint: Option<String>,
    /// How to authenticate (see [`AzureCredentials`]).
    #[serde(
        default,
        alias = "client_secret_credential",
        skip_serializing_if = "Option::is_none"
    )]
    pub credentials: Option<AzureCredentials>,
}

/// How the connector authenticates. `Debug`, `Display` and error messages never show secrets.
///
/// Shapes (one object; exactly one way):
///
/// - `{ "tenant_id": …, "client_id": …, "client_secret": … }` — an Entra ID application
///   (the original system's `AzureClientSecretCredential`);
/// - `{ "managed_identity": true }` or `{ "managed_identity": { "client_id": … } }`;
/// - `{ "azure_cli": true }` — the `az login` of the machine;
/// - `{ "sas_token": "sv=…&sig=…" }` — a shared access signature (account or container);
/// - `{ "account_key": … }` — the account's key, from which the connector mints short-lived
///   account SAS tokens;
/// - `{ "connection_string": "DefaultEndpointsProtocol=…;AccountName=…;AccountKey=…" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureCredentials {
    /// An Entra ID application's client secret.
    ClientSecret {
        /// The directory (tenant) id.
        tenant_id: String,
        /// The application (client) id.
        client_id: String,
        /// The client secret.
        client_secret: Sensitive<String>,
    },
    /// The managed identity of the host: system-assigned, or the user-assigned one with this
    /// client id.
    ManagedIdentity {
        /// The client id of a user-assigned identity.
        client_id: Option<String>,
    },
    /// The Azure CLI's login (`az account get-access-token`).
    AzureCli,
    /// A SAS token (the query string, with or without the leading `?`).
    SasToken(Sensitive<String>),
    /// The account key (base64), used to mint account SAS tokens.
    AccountKey(Sensitive<String>),
    /// A storage connection string.
    ConnectionString(Sensitive<String>),
}

impl AzureConfig {
    /// A config for `container` with the account and credentials from the environment.
    pub fn new(container: impl Into<String>) -> Self {
        AzureConfig {
            account: None,
            container: container.into(),
            endpoint: None,
            credentials: None,
        }
    }

    /// Creates the store: resolves account, endpoint and credentials (no request is sent).
    pub async fn build_store(&self) -> Result<AzureStore> {
        self.validate()?;
        let resolved = self.resolve()?;
        AzureStore::connect(resolved, self.container.clone())
    }

    /// The account, endpoint and authentication this config comes to, with the environment.
    pub(crate) fn resolve(&self) -> Result<Resolved> {
        let env_cs = match &self.credentials {
            Some(_) => None,
            None => std::env::var(CONNECTION_STRING_ENV)
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(Sensitive::new),
        };
        let cs = match (&self.credentials, &env_cs) {
            (Some(AzureCredentials::ConnectionString(cs)), _) => Some(
                ConnectionString::parse(cs.expose())
                    .map_err(|e| Error::config(format!("azure connector: 'credentials': {e}")))?,
            ),
            (None, Some(cs)) => Some(ConnectionString::parse(cs.expose()).map_err(|e| {
                Error::config(format!("azure connector: {CONNECTION_STRING_ENV}: {e}"))
            })?),
            _ => None,
        };
        // A key or SAS for another account would only be refused by the service: say so now.
        if let (Some(account), Some(cs_account)) = (
            &self.account,
            cs.as_ref().and_then(|c| c.account_name.as_ref()),
        ) && account != cs_account
        {
            let from = if env_cs.is_some() {
                CONNECTION_STRING_ENV
            } else {
                "the connection string in 'credentials'"
            };
            return Err(Error::config(format!(
                "azure connector: 'account' is {account:?} but {from} is for account                  {cs_account:?}; give this connector its own 'credentials'"
            )));
        }
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| cs.as_ref().and_then(|c| c.blob_endpoint.clone()));
        let account = self
            .account
            .clone()
            .or_else(|| cs.as_ref().and_then(|c| c.account_name.clone()))
            .or_else(|| endpoint.as_deref().and_then(account_from_endpoint));
        let Some(account) = account else {
            return Err(Error::config(
                "azure connector: no storage account: set 'account' (or 'endpoint', or \
                 AZURE_STORAGE_CONNECTION_STRING)",
            ));
        };
        validate_account(&account)?;
        let endpoint = match endpoint {
            Some(e) => e,
            None => {
                let (protocol, suffix) = cs.as_ref().map_or(("https", "core.windows.net"), |c| {
                    (
                        c.protocol.as_deref().unwrap_or("https"),
                        c.endpoint_suffix.as_deref().unwrap_or("core.windows.net"),
                    )
                });
                format!("{protocol}://{account}.blob.{suffix}")
            }
        };
        validate_endpoint(&endpoint)?;
        let auth = match (&self.credentials, cs) {
            (Some(AzureCredentials::ConnectionString(_)), Some(cs)) | (None, Some(cs)) => {
                match (cs.account_key, cs.sas) {
                    (Some(key), _) => Auth::AccountKey(decode_key(&key)?),
                    (None, Some(sas)) => Auth::Sas(sas),
                    (None, None) => {
                        return Err(Error::config(
                            "azure connector: the connection string has neither AccountKey nor \
                             SharedAccessSignature",
                        ));
                    }
                }
            }
            (Some(AzureCredentials::ConnectionString(_)), None) => {
                unreachable!("a connection string in the credentials was parsed above")
            }
            (Some(AzureCredentials::AccountKey(key)), _) => Auth::AccountKey(decode_key(key)?),
            (Some(AzureCredentials::SasToken(sas)), _) => Auth::Sas(Sensitive::new(
                sas.expose().trim_start_matches('?').to_string(),
            )),
            (Some(c @ AzureCredentials::ClientSecret { .. }), _)
            | (Some(c @ AzureCredentials::ManagedIdentity { .. }), _)
            | (Some(c @ AzureCredentials::AzureCli), _) => Auth::Token(c.clone()),
            (None, None) => {
                let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                match (
                    var("AZURE_TENANT_ID"),
                    var("AZURE_CLIENT_ID"),
                    var("AZURE_CLIENT_SECRET"),
                ) {
                    (Some(tenant_id), Some(client_id), Some(secret)) => {
                        Auth::Token(AzureCredentials::ClientSecret {
                            tenant_id,
                            client_id,
                            client_secret: Sensitive::new(secret),
                        })
                    }
                    _ => Auth::Token(AzureCredentials::AzureCli),
                }
            }
        };
        Ok(Resolved {
            account,
            endpoint,
            auth,
        })
    }

    /// The account the config names, or the environment's; `None` when there is none.
    fn account_for_location(&self) -> Result<String> {
        Ok(self.resolve()?.account)
    }
}

/// What a config resolves to.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub account: String,
    pub endpoint: String,
    pub auth: Auth,
}

/// How requests are authenticated.
#[derive(Debug)]
pub(crate) enum Auth {
    /// Entra ID tokens from one of the token credentials.
    Token(AzureCredentials),
    /// A fixed SAS token (without `?`).
    Sas(Sensitive<String>),
    /// The decoded account key: account SAS tokens are minted from it.
    AccountKey(Sensitive<Vec<u8>>),
}

fn decode_key(key: &Sensitive<String>) -> Result<Sensitive<Vec<u8>>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key.expose().trim())
        .map(Sensitive::new)
        .map_err(|_| Error::config("azure connector: the account key is not valid base64"))
}

keylink_core::register!(keylink_core::registry::Component {
    kind: keylink_core::registry::Kind::Connector,
    name: "azure",
    description: "Azure Blob Storage containers (and Azurite)",
    example: r#"{ "type": "azure", "container": "lake" }"#,
    schemes: &["az"],
    from_url: Some(from_url),
    schema: keylink_core::schema::of::<AzureConfig>,
});

/// `az://container/…`: an `azure` connector of the config on that container (its account and
/// credentials), else the container with account, endpoint and credentials from the
/// environment (`AZURE_STORAGE_CONNECTION_STRING`).
fn from_url(
    container: &str,
    config: &keylink_core::job::Config,
) -> keylink_core::Result<serde_json::Value> {
    for c in config.connectors.values() {
        let json = serde_json::to_value(c)
            .map_err(|e| Error::config(format!("a connector of the config: {e}")))?;
        let name = json.get("container").or_else(|| json.get("container_name"));
        if json["type"] == "azure" && name.and_then(|n| n.as_str()) == Some(container) {
            return Ok(json);
        }
    }
    Ok(serde_json::json!({ "type": "azure", "container": container }))
}

#[async_trait]
#[typetag::serde(name = "azure")]
impl ConnectorConfig for AzureConfig {
    fn validate(&self) -> Result<()> {
        validate_container(&self.container)?;
        if let Some(account) = &self.account {
            validate_account(account)?;
        }
        if let Some(endpoint) = &self.endpoint {
            validate_endpoint(endpoint)?;
        }
        match &self.credentials {
            Some(AzureCredentials::ClientSecret {
                tenant_id,
                client_id,
                client_secret,
            }) => {
                for (field, value) in [
                    ("tenant_id", tenant_id.as_str()),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.expose().as_str()),
                ] {
                    if value.trim().is_empty() {
                        return Err(Error::config(format!(
                            "azure connector: 'credentials.{field}' must not be empty"
                        )));
                    }
                }
            }
            Some(AzureCredentials::AccountKey(key)) => {
                decode_key(key)?;
            }
            Some(AzureCredentials::SasToken(sas)) if !sas.expose().contains("sig=") => {
                return Err(Error::config(
                    "azure connector: 'credentials.sas_token' is not a SAS token (no sig=)",
                ));
            }
            Some(AzureCredentials::ConnectionString(cs)) => {
                ConnectionString::parse(cs.expose())
                    .map_err(|e| Error::config(format!("azure connector: 'credentials': {e}")))?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn build_source(&self, _ctx: &BuildContext) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(self.build_store().await?))
    }

    async fn build_sink(&self, _ctx: &BuildContext) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(self.build_store().await?))
    }

    /// `az://account/container/name`: the endpoint is not part of it (two connectors reaching
    /// the same account by different URLs are one store).
    fn location(&self, _ctx: &BuildContext, path: &str) -> Result<ObjectLocation> {
        validate_container(&self.container)?;
        let account = self.account_for_location()?;
        Ok(ObjectLocation::new(
            "az",
            format!("{account}/{}", self.container),
            path,
        ))
    }
}

/// Container names: 3–63 characters of `a-z 0-9 -`, starting with a letter or digit, no `--`.
pub(crate) fn validate_container(container: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::config(format!(
            "azure connector: 'container' {container:?} is not a container name: {why}"
        )))
    };
    if container.starts_with("az://") || container.contains('/') {
        return bad("give the container's name alone (no az:// and no '/'; paths go in the job)");
    }
    if !(3..=63).contains(&container.len()) {
        return bad("it must have 3 to 63 characters");
    }
    if !container
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only lower-case letters, digits and '-' are allowed");
    }
    if container.starts_with('-') || container.ends_with('-') || container.contains("--") {
        return bad("it must start and end with a letter or digit and not contain '--'");
    }
    Ok(())
}

/// Account names: 3–24 lower-case letters and digits.
fn validate_account(account: &str) -> Result<()> {
    let ok = (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "azure connector: 'account' {account:?} is not a storage account name (3 to 24 \
             lower-case letters and digits)"
        )))
    }
}

/// An endpoint must be an `http://` or `https://` URL with a host, without user info or query.
fn validate_endpoint(endpoint: &str) -> Result<()> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(h)
            if !h.is_empty()
                && !h.contains('@')
                && !endpoint.contains(['?', '#'])
                && !endpoint.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        // Not echoed: a URL with user info or a query may carry a secret.
        _ => Err(Error::config(
            "azure connector: 'endpoint' must be an http:// or https:// URL with a host, without \
             user info or query (like \"https://myacct.blob.core.windows.net\"; a SAS goes in \
             'credentials.sas_token')",
        )),
    }
}

/// The account of `https://<account>.blob.core.windows.net`, or of an emulator's path-style
/// `http://127.0.0.1:10000/<account>`.
fn account_from_endpoint(endpoint: &str) -> Option<String> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let first_path = path.split('/').next().unwrap_or("");
    if !first_path.is_empty() {
        return Some(first_path.to_string());
    }
    let label = host.split('.').next()?;
    (host.contains(".blob.")).then(|| label.to_string())
}

/// The fields of a storage connection string that matter here.
#[derive(Debug, Default)]
pub(crate) struct ConnectionString {
    pub account_name: Option<String>,
    pub account_key: Option<Sensitive<String>>,
    pub sas: Option<Sensitive<String>>,
    pub blob_endpoint: Option<String>,
    pub protocol: Option<String>,
    pub endpoint_suffix: Option<String>,
}

/// Azurite's well-known development account (public; documented by Microsoft).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl ConnectionString {
    /// Parses `Key=Value;…`. Errors name keys, never values.
    pub(crate) fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut out = ConnectionString::default();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err("the connection string is not a list of Key=Value; pairs".into());
            };
            let v = v.trim().to_string();
            match k.trim() {
                "AccountName" => out.account_name = Some(v),
                "AccountKey" => out.account_key = Some(Sensitive::new(v)),
                "SharedAccessSignature" => {
                    out.sas = Some(Sensitive::new(v.trim_start_matches('?').to_string()))
                }
                "BlobEndpoint" => out.blob_endpoint = Some(v),
                "DefaultEndpointsProtocol" => out.protocol = Some(v),
                "EndpointSuffix" => out.endpoint_suffix = Some(v),
                "UseDevelopmentStorage" if v.eq_ignore_ascii_case("true") => {
                    out.account_name = Some(DEV_ACCOUNT.into());
                    out.account_key = Some(Sensitive::new(DEV_KEY.into()));
                    out.blob_endpoint
                        .get_or_insert_with(|| format!("http://127.0.0.1:10000/{DEV_ACCOUNT}"));
                }
                // Endpoints of the other services and settings without effect on blobs.
                "QueueEndpoint"
                | "TableEndpoint"
                | "FileEndpoint"
                | "UseDevelopmentStorage"
                | "DevelopmentStorageProxyUri" => {}
                other => return Err(format!("unknown connection string key `{other}`")),
            }
        }
        if out.account_key.is_some() && out.account_name.is_none() {
            return Err("the connection string has an AccountKey but no AccountName".into());
        }
        Ok(out)
    }
}

// -------------------------------------------------------------------------- credentials parsing

fn azure_aliases(s: &mut schemars::Schema) {
    keylink_core::schema::with_alias(s, "container", "container_name");
    keylink_core::schema::with_alias(s, "endpoint", "storage_account_uri");
    keylink_core::schema::with_alias(s, "credentials", "client_secret_credential");
}

/// What `parse_credentials` accepts: exactly one way.
impl schemars::JsonSchema for AzureCredentials {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AzureCredentials".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let one = |name: &str, value: serde_json::Value, description: &str| {
            serde_json::json!({
                "type": "object",
                "description": description,
                "properties": { name: value },
                "required": [name],
                "additionalProperties": false,
            })
        };
        let text = serde_json::json!({ "type": "string" });
        schemars::json_schema!({
            "description": "How the connector authenticates (exactly one way).",
            "oneOf": [
                {
                    "type": "object",
                    "description": "An Entra ID application's client secret.",
                    "properties": {
                        "tenant_id": { "type": "string", "description": "The directory (tenant) id." },
                        "client_id": { "type": "string", "description": "The application (client) id." },
                        "client_secret": { "type": "string", "description": "The client secret." },
                    },
                    "required": ["tenant_id", "client_id", "client_secret"],
                    "additionalProperties": false,
                },
                one(
                    "managed_identity",
                    serde_json::json!({ "oneOf": [
                        { "const": true },
                        {
                            "type": "object",
                            "properties": { "client_id": { "type": "string" } },
                            "required": ["client_id"],
                            "additionalProperties": false,
                        },
                    ] }),
                    "The host's managed identity: system-assigned (true) or user-assigned ({client_id}).",
                ),
                one("azure_cli", serde_json::json!({ "const": true }), "The Azure CLI's login."),
                one("sas_token", text.clone(), "A SAS token (the query string)."),
                one("account_key", text.clone(), "The account key (base64), used to mint account SAS tokens."),
                one("connection_string", text, "A storage connection string."),
            ],
        })
    }
}

impl<'de> Deserialize<'de> for AzureCredentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Parsed by hand from a generic value so that no error message can quote a secret.
        let value = Value::deserialize(d)?;
        parse_credentials(value).map_err(serde::de::Error::custom)
    }
}

impl Serialize for AzureCredentials {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = Map::new();
        let text = |v: &str| Value::String(v.to_string());
        match self {
            AzureCredentials::ClientSecret {
                tenant_id,
                client_id,
                client_secret,
            } => {
                map.insert("tenant_id".into(), text(tenant_id));
                map.insert("client_id".into(), text(client_id));
                map.insert("client_secret".into(), text(client_secret.expose()));
            }
            AzureCredentials::ManagedIdentity { client_id: None } => {
                map.insert("managed_identity".into(), Value::Bool(true));
            }
            AzureCredentials::ManagedIdentity {
                client_id: Some(id),
            } => {
                let mut inner = Map::new();
                inner.insert("client_id".into(), text(id));
                map.insert("managed_identity".into(), Value::Object(inner));
            }
            AzureCredentials::AzureCli => {
                map.insert("azure_cli".into(), Value::Bool(true));
            }
            AzureCredentials::SasToken(v) => {
                map.insert("sas_token".into(), text(v.expose()));
            }
            AzureCredentials::AccountKey(v) => {
                map.insert("account_key".into(), text(v.expose()));
            }
            AzureCredentials::ConnectionString(v) => {
                map.insert("connection_string".into(), text(v.expose()));
            }
        }
        Value::Object(map).serialize(s)
    }
}

const SHAPES: &str = "expected {tenant_id, client_id, client_secret}, {managed_identity: true}, \
                      {azure_cli: true}, {sas_token}, {account_key} or {connection_string}";

fn parse_credentials(value: Value) -> std::result::Result<AzureCredentials, String> {
    let Value::Object(mut map) = value else {
        return Err(format!("credentials must be an object ({SHAPES})"));
    };
    let creds = if map.contains_key("client_secret")
        || map.contains_key("tenant_id")
        || map.contains_key("client_id")
    {
        AzureCredentials::ClientSecret {
            tenant_id: take_string(&mut map, "tenant_id")?.into_inner(),
            client_id: take_string(&mut map, "client_id")?.into_inner(),
            client_secret: take_string(&mut map, "client_secret")?,
        }
    } else if let Some(mi) = map.remove("managed_identity") {
        match mi {
            Value::Bool(true) => AzureCredentials::ManagedIdentity { client_id: None },
            Value::Object(mut inner) => {
                let id = take_string(&mut inner, "client_id")?.into_inner();
                if let Some(other) = inner.keys().next() {
                    return Err(format!(
                        "unknown credentials field `managed_identity.{other}` (expected client_id)"
                    ));
                }
                AzureCredentials::ManagedIdentity {
                    client_id: Some(id),
                }
            }
            _ => return Err("`managed_identity` must be true or {client_id: …}".into()),
        }
    } else if let Some(cli) = map.remove("azure_cli") {
        if cli != Value::Bool(true) {
            return Err("`azure_cli` must be true".into());
        }
        AzureCredentials::AzureCli
    } else if map.contains_key("sas_token") {
        AzureCredentials::SasToken(take_string(&mut map, "sas_token")?)
    } else if map.contains_key("account_key") {
        AzureCredentials::AccountKey(take_string(&mut map, "account_key")?)
    } else if map.contains_key("connection_string") {
        AzureCredentials::ConnectionString(take_string(&mut map, "connection_string")?)
    } else {
        return match map.keys().next() {
            Some(other) => Err(format!("unknown credentials field `{other}` ({SHAPES})")),
            None => Err(format!("empty credentials ({SHAPES})")),
        };
    };
    if let Some(other) = map.keys().next() {
        return Err(format!(
            "unknown or conflicting credentials field `{other}` ({SHAPES}; exactly one way)"
        ));
    }
    Ok(creds)
}

fn take_string(
    map: &mut Map<String, Value>,
    field: &str,
) -> std::result::Result<Sensitive<String>, String> {
    match map.remove(field) {
        None | Some(Value::Null) => Err(format!("missing credentials field `{field}`")),
        Some(Value::String(s)) => Ok(Sensitive::new(s)),
        Some(_) => Err(format!("credentials field `{field}` must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "cl13nt~S3CRET.value";
    const KEY: &str = "a2V5bGluay10ZXN0LWFjY291bnQta2V5LVNFQ1JFVA==";
    const SAS: &str =
        "sv=2022-11-02&ss=b&srt=sco&sp=rl&se=2099-01-01T00%3A00%3A00Z&sig=SASs1gSECRET";

    fn parse(json: &str) -> std::result::Result<AzureConfig, String> {
        let c: Box<dyn ConnectorConfig> = serde_json::from_str(json).map_err(|e| e.to_string())?;
        // serializes with its tag and reads back the same
        let mut any = serde_json::to_value(&*c).unwrap();
        let again: Box<dyn ConnectorConfig> = serde_json::from_value(any.clone()).unwrap();
        assert_eq!(format!("{again:?}"), format!("{c:?}"));
        any.as_object_mut().unwrap().remove("type");
        Ok(serde_json::from_value(any).unwrap())
    }

    #[test]
    fn every_credentials_shape_parses() {
        let c = parse(r#"{"type":"azure","account":"myacct","container":"lake"}"#).unwrap();
        assert_eq!(c.container, "lake");
        c.validate().unwrap();
        for (creds, want) in [
            (
                format!(r#"{{"tenant_id":"t","client_id":"c","client_secret":"{SECRET}"}}"#),
                AzureCredentials::ClientSecret {
                    tenant_id: "t".into(),
                    client_id: "c".into(),
                    client_secret: Sensitive::new(SECRET.into()),
                },
            ),
            (
                r#"{"managed_identity":true}"#.into(),
                AzureCredentials::ManagedIdentity { client_id: None },
            ),
            (
                r#"{"managed_identity":{"client_id":"abc"}}"#.into(),
                AzureCredentials::ManagedIdentity {
                    client_id: Some("abc".into()),
                },
            ),
            (r#"{"azure_cli":true}"#.into(), AzureCredentials::AzureCli),
            (
                format!(r#"{{"sas_token":"{SAS}"}}"#),
                AzureCredentials::SasToken(Sensitive::new(SAS.into())),
            ),
            (
                format!(r#"{{"account_key":"{KEY}"}}"#),
                AzureCredentials::AccountKey(Sensitive::new(KEY.into())),
            ),
        ] {
            let c = parse(&format!(
                r#"{{"type":"azure","account":"myacct","container":"lake","credentials":{creds}}}"#
            ))
            .unwrap();
            c.validate().unwrap();
            assert_eq!(c.credentials, Some(want), "{creds}");
        }
    }

    #[test]
    fn the_original_systems_shape_parses() {
        let c = parse(&format!(
            r#"{{"type":"azure","storage_account_uri":"https://myacct.blob.core.windows.net",
                "container_name":"lake",
                "client_secret_credential":{{"tenant_id":"t","client_id":"c","client_secret":"{SECRET}"}}}}"#
        ))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.container, "lake");
        assert_eq!(
            c.endpoint.as_deref(),
            Some("https://myacct.blob.core.windows.net")
        );
        let r = c.resolve().unwrap();
        assert_eq!(r.account, "myacct");
        assert!(matches!(
            r.auth,
            Auth::Token(AzureCredentials::ClientSecret { .. })
        ));
        let loc = c
            .location(&BuildContext::default(), "raw/a.csv")
            .unwrap()
            .to_string();
        assert_eq!(loc, "az://myacct/lake/raw/a.csv");
    }

    #[test]
    fn connection_strings_resolve() {
        let cs = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};\
             BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
        );
        let mut c = AzureConfig::new("lake");
        c.credentials = Some(AzureCredentials::ConnectionString(Sensitive::new(cs)));
        c.validate().unwrap();
        let r = c.resolve().unwrap();
        assert_eq!(r.account, "devstoreaccount1");
        assert_eq!(r.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert!(matches!(r.auth, Auth::AccountKey(_)));
        // a cloud account: the endpoint follows from the name and the suffix
        let cs = format!(
            "DefaultEndpointsProtocol=https;AccountName=myacct;AccountKey={KEY};\
             EndpointSuffix=core.chinacloudapi.cn"
        );
        c.credentials = Some(AzureCredentials::ConnectionString(Sensitive::new(cs)));
        let r = c.resolve().unwrap();
        assert_eq!(r.endpoint, "https://myacct.blob.core.chinacloudapi.cn");
        // a SAS connection string
        let cs = format!(
            "BlobEndpoint=https://myacct.blob.core.windows.net;SharedAccessSignature={SAS}"
        );
        c.credentials = Some(AzureCredentials::ConnectionString(Sensitive::new(cs)));
        let r = c.resolve().unwrap();
        assert_eq!(r.account, "myacct");
        assert!(matches!(r.auth, Auth::Sas(_)));
        // Azurite's shorthand
        c.credentials = Some(AzureCredentials::ConnectionString(Sensitive::new(
            "UseDevelopmentStorage=true".into(),
        )));
        let r = c.resolve().unwrap();
        assert_eq!(r.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        // a connection string for another account than the one named is refused
        let mut other = AzureConfig::new("lake");
        other.account = Some("otheracct".into());
        other.credentials = Some(AzureCredentials::ConnectionString(Sensitive::new(format!(
            "AccountName=myacct;AccountKey={KEY}"
        ))));
        let e = other.resolve().unwrap_err().to_string();
        assert!(
            e.contains("otheracct") && e.contains("myacct") && !e.contains(KEY),
            "{e}"
        );
        // unknown keys are refused, naming the key only
        c.credentials = Some(AzureCredentials::ConnectionString(Sensitive::new(format!(
            "AccountName=a;AcountKey={KEY}"
        ))));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("AcountKey") && !e.contains(KEY), "{e}");
    }

    #[test]
    fn unknown_misspelt_and_conflicting_fields_are_refused() {
        for (json, expect) in [
            (
                r#"{"type":"azure","container":"lake","acount":"x"}"#,
                "acount",
            ),
            (
                r#"{"type":"azure","container":"lake","credentials":{"tenant_id":"t","client_id":"c"}}"#,
                "client_secret",
            ),
            (
                r#"{"type":"azure","container":"lake","credentials":{"account_key":"a","sas_token":"b"}}"#,
                "conflicting",
            ),
            (
                r#"{"type":"azure","container":"lake","credentials":{"acount_key":"a"}}"#,
                "acount_key",
            ),
            (
                r#"{"type":"azure","container":"lake","credentials":{"azure_cli":"yes"}}"#,
                "azure_cli",
            ),
            (
                r#"{"type":"azure","container":"lake","credentials":{}}"#,
                "empty",
            ),
            (
                r#"{"type":"azure","container":"lake","credentials":"x"}"#,
                "object",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(expect), "{json}: {e}");
        }
    }

    #[test]
    fn secrets_never_show() {
        let configs = [
            format!(
                r#"{{"type":"azure","account":"myacct","container":"lake","credentials":{{"tenant_id":"t","client_id":"c","client_secret":"{SECRET}"}}}}"#
            ),
            format!(
                r#"{{"type":"azure","account":"myacct","container":"lake","credentials":{{"account_key":"{KEY}"}}}}"#
            ),
            format!(
                r#"{{"type":"azure","account":"myacct","container":"lake","credentials":{{"sas_token":"{SAS}"}}}}"#
            ),
            format!(
                r#"{{"type":"azure","container":"lake","credentials":{{"connection_string":"AccountName=myacct;AccountKey={KEY}"}}}}"#
            ),
        ];
        for json in &configs {
            let c: Box<dyn ConnectorConfig> = serde_json::from_str(json).unwrap();
            let shown = format!("{c:?} {c:#?}");
            for secret in [SECRET, KEY, "SASs1gSECRET"] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(shown.contains("REDACTED"), "{shown}");
        }
        // errors about credentials never quote them
        let bad = [
            format!(r#"{{"type":"azure","container":"lake","credentials":"{SECRET}"}}"#),
            format!(
                r#"{{"type":"azure","container":"lake","credentials":{{"account_key":["{KEY}"]}}}}"#
            ),
            format!(
                r#"{{"type":"azure","container":"lake","credentials":{{"sas_token":"{SAS}","x":"{SECRET}"}}}}"#
            ),
        ];
        for json in &bad {
            let e = serde_json::from_str::<Box<dyn ConnectorConfig>>(json)
                .unwrap_err()
                .to_string();
            for secret in [SECRET, KEY, "SASs1gSECRET"] {
                assert!(!e.contains(secret), "{e}");
            }
        }
        // validation errors name the field, not the value
        let mut c = AzureConfig::new("lake");
        c.account = Some("myacct".into());
        c.credentials = Some(AzureCredentials::AccountKey(Sensitive::new(
            "not base64 SECRET!".into(),
        )));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("account key") && !e.contains("SECRET"), "{e}");
        c.credentials = Some(AzureCredentials::SasToken(Sensitive::new(
            "SECRETnosig".into(),
        )));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sas_token") && !e.contains("SECRET"), "{e}");
        // an endpoint with a SAS or a password in it is refused and not echoed
        for endpoint in [
            format!("https://myacct.blob.core.windows.net/?{SAS}"),
            format!("https://user:{SECRET}@myacct.blob.core.windows.net"),
        ] {
            let mut c = AzureConfig::new("lake");
            c.endpoint = Some(endpoint);
            let e = c.validate().unwrap_err().to_string();
            assert!(!e.contains("SASs1gSECRET") && !e.contains(SECRET), "{e}");
        }
    }

    #[test]
    fn validation_names_the_setting() {
        for ok in ["abc", "my-lake", "lake2024", "a1b"] {
            AzureConfig::new(ok).validate().unwrap();
        }
        for (name, why) in [
            ("ab", "3 to 63"),
            ("az://lake", "no az://"),
            ("lake/raw", "'/'"),
            ("-lake", "start and end"),
            ("my--lake", "'--'"),
            ("MyLake", "lower-case"),
            ("my_lake", "lower-case"),
        ] {
            let e = AzureConfig::new(name).validate().unwrap_err();
            assert_eq!(e.kind(), keylink_core::ErrorKind::Config);
            assert!(
                e.to_string().contains("'container'") && e.to_string().contains(why),
                "{name}: {e}"
            );
        }
        let mut c = AzureConfig::new("lake");
        c.account = Some("My_Account".into());
        assert!(c.validate().unwrap_err().to_string().contains("'account'"));
        for bad in [
            "myacct.blob.core.windows.net",
            "ftp://x",
            "http://",
            "http://a b",
        ] {
            let mut c = AzureConfig::new("lake");
            c.endpoint = Some(bad.into());
            assert!(
                c.validate().unwrap_err().to_string().contains("'endpoint'"),
                "{bad}"
            );
        }
        // Entra ID needs https
        let mut c = AzureConfig::new("lake");
        c.endpoint = Some("http://127.0.0.1:10000/devstoreaccount1".into());
        c.credentials = Some(AzureCredentials::AzureCli);
        let e = crate::store::AzureStore::connect(c.resolve().unwrap(), "lake".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://"), "{e}");
    }

    #[test]
    fn endpoints_name_their_account() {
        assert_eq!(
            account_from_endpoint("https://myacct.blob.core.windows.net").as_deref(),
            Some("myacct")
        );
        assert_eq!(
            account_from_endpoint("http://127.0.0.1:10000/devstoreaccount1").as_deref(),
            Some("devstoreaccount1")
        );
        assert_eq!(account_from_endpoint("https://files.example.com"), None);
    }
}
