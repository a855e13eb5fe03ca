//! Account shared access signatures minted from an account key, and the pipeline policy that
//! puts a SAS on every request.
//!
//! The official SDK has no shared-key signing; an account key (or a connection string holding
//! one) is turned into a short-lived account SAS: HMAC-SHA256 with the decoded key over the
//! documented string-to-sign of an account SAS (version 2020-12-06 and later, with its
//! encryption-scope line), base64 — see "Create an account SAS" in the Azure Storage REST docs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use keylink_core::Sensitive;
use sha2::Sha256;

/// The service version the minted SAS tokens are signed for.
pub const SAS_VERSION: &str = "2022-11-02";

/// How long a minted SAS is valid. A new one is minted when less than [`SAS_RENEW_BEFORE`] is
/// left, so a long job never runs on an expired one.
pub const SAS_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// See [`SAS_LIFETIME`].
pub const SAS_RENEW_BEFORE: Duration = Duration::from_secs(15 * 60);

/// The fields of an account SAS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSas<'a> {
    /// The account name.
    pub account: &'a str,
    /// `sp`: permissions (`rwdlac`).
    pub permissions: &'a str,
    /// `ss`: services (`b` for blobs).
    pub services: &'a str,
    /// `srt`: resource types (`sco`: service, container, object).
    pub resource_types: &'a str,
    /// `st`: start time (ISO 8601, UTC), or empty.
    pub start: &'a str,
    /// `se`: expiry time (ISO 8601, UTC).
    pub expiry: &'a str,
    /// `sip`: allowed IP range, or empty.
    pub ip: &'a str,
    /// `spr`: allowed protocols (`https` or `https,http`), or empty.
    pub protocol: &'a str,
    /// `sv`: the signed version.
    pub version: &'a str,
}

impl AccountSas<'_> {
    /// The documented string-to-sign (versions 2020-12-06 and later: the encryption scope line,
    /// empty here, ends it).
    pub fn string_to_sign(&self) -> String {
        [
            self.account,
            self.permissions,
            self.services,
            self.resource_types,
            self.start,
            self.expiry,
            self.ip,
            self.protocol,
            self.version,
            "", // signed encryption scope
            "",
        ]
        .join("\n")
    }

    /// The signature: base64(HMAC-SHA256(key, string-to-sign)).
    pub fn signature(&self, key: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .expect("HMAC accepts keys of any length");
        mac.update(self.string_to_sign().as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// The token: the query string (without `?`), signature included.
    pub fn token(&self, key: &[u8]) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("sv", self.version)
            .append_pair("ss", self.services)
            .append_pair("srt", self.resource_types)
            .append_pair("sp", self.permissions);
        if !self.start.is_empty() {
            q.append_pair("st", self.start);
        }
        q.append_pair("se", self.expiry);
        if !self.ip.is_empty() {
            q.append_pair("sip", self.ip);
        }
        if !self.protocol.is_empty() {
            q.append_pair("spr", self.protocol);
        }
        q.append_pair("sig", &self.signature(key));
        q.finish()
    }
}

/// Formats a time as the SAS wants it: `2024-01-02T03:04:05Z`.
fn sas_time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Mints a blob account SAS (read, write, delete, list, add, create on service, containers and
/// blobs) valid from 5 minutes ago (clock skew) for `lifetime`.
pub(crate) fn mint(account: &str, key: &[u8], now: SystemTime, lifetime: Duration) -> String {
    let start = sas_time(now - Duration::from_secs(300));
    let expiry = sas_time(now + lifetime);
    AccountSas {
        account,
        permissions: "rwdlac",
        services: "b",
        resource_types: "sco",
        start: &start,
        expiry: &expiry,
        ip: "",
        protocol: "",
        version: SAS_VERSION,
    }
    .token(key)
}

/// Where the SAS of a request comes from.
enum SasSource {
    /// A token given in the config or the connection string.
    Fixed(Sensitive<String>),
    /// Minted from the account key and renewed before it expires.
    Minted {
        account: String,
        key: Sensitive<Vec<u8>>,
        current: Mutex<Option<(Arc<Sensitive<String>>, SystemTime)>>,
    },
}

/// A pipeline policy that appends the SAS to the query of every request (so that the SAS is
/// never part of a client's URL, and a minted one is renewed in time).
pub(crate) struct SasPolicy {
    source: SasSource,
}

impl std::fmt::Debug for SasPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasPolicy").finish_non_exhaustive()
    }
}

impl SasPolicy {
    pub(crate) fn fixed(token: Sensitive<String>) -> Self {
        SasPolicy {
            source: SasSource::Fixed(token),
        }
    }

    pub(crate) fn minted(account: String, key: Sensitive<Vec<u8>>) -> Self {
        SasPolicy {
            source: SasSource::Minted {
                account,
                key,
                current: Mutex::new(None),
            },
        }
    }

    /// The token to use now.
    fn token(&self) -> Arc<Sensitive<String>> {
        match &self.source {
            SasSource::Fixed(t) => Arc::new(t.clone()),
            SasSource::Minted {
                account,
                key,
                current,
            } => {
                let now = SystemTime::now();
                let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
                match &*cur {
                    Some((token, renew_at)) if now < *renew_at => Arc::clone(token),
                    _ => {
                        let token = Arc::new(Sensitive::new(mint(
                            account,
                            key.expose(),
                            now,
                            SAS_LIFETIME,
                        )));
                        *cur = Some((Arc::clone(&token), now + SAS_LIFETIME - SAS_RENEW_BEFORE));
                        token
                    }
                }
            }
        }
    }
}

#[keylink_core::async_trait]
impl Policy for SasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        self.apply(request.url_mut());
        next[0].send(ctx, request, &next[1..]).await
    }
}

impl SasPolicy {
    /// Puts the current SAS on `url`.
    fn apply(&self, url: &mut url::Url) {
        let token = self.token();
        // A retry passes through again: replace, never stack, the SAS parameters.
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !SAS_KEYS.contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &kept {
            query.append_pair(k, v);
        }
        let mut query = query.finish();
        if !token.expose().is_empty() {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(token.expose());
        }
        url.set_query(Some(&query));
    }
}

/// The query parameters a SAS consists of.
const SAS_KEYS: [&str; 19] = [
    "sv", "ss", "srt", "sp", "st", "se", "sip", "spr", "sig", "sr", "si", "ses", "skoid", "sktid",
    "skt", "ske", "sks", "skv", "sdd",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Azurite's public development key (documented by Microsoft).
    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn key() -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(DEV_KEY)
            .unwrap()
    }

    #[test]
    fn string_to_sign_follows_the_documented_layout() {
        // The account SAS of the REST docs' example ("Create an account SAS"):
        // sv=2019-02-02&ss=bf&srt=s&st=2019-08-01T22%3A18%3A26Z&se=2019-08-10T02%3A23%3A26Z
        // &sp=rw&sip=168.1.5.60-168.1.5.70&spr=https — one field a line, in this order, the
        // encryption-scope line last for 2020-12-06 and later.
        let sas = AccountSas {
            account: "storagesample",
            permissions: "rw",
            services: "bf",
            resource_types: "s",
            start: "2019-08-01T22:18:26Z",
            expiry: "2019-08-10T02:23:26Z",
            ip: "168.1.5.60-168.1.5.70",
            protocol: "https",
            version: "2020-12-06",
        };
        assert_eq!(
            sas.string_to_sign(),
            "storagesample\nrw\nbf\ns\n2019-08-01T22:18:26Z\n2019-08-10T02:23:26Z\n\
             168.1.5.60-168.1.5.70\nhttps\n2020-12-06\n\n"
        );
        let token = sas.token(&key());
        assert!(
            token.starts_with(
                "sv=2020-12-06&ss=bf&srt=s&sp=rw&st=2019-08-01T22%3A18%3A26Z\
                 &se=2019-08-10T02%3A23%3A26Z&sip=168.1.5.60-168.1.5.70&spr=https&sig="
            ),
            "{token}"
        );
    }

    #[test]
    fn signature_matches_microsofts_python_client() {
        // Reference vector made with Microsoft's `azure-storage-blob` 12.x:
        // generate_account_sas("devstoreaccount1", DEV_KEY, ResourceTypes(service=True,
        // container=True, object=True), AccountSasPermissions(read, write, delete, list, add,
        // create), expiry="2030-01-01T00:00:00Z", start="2029-12-31T23:00:00Z", services="b")
        // (12.31.1, which signs for version 2026-10-06) gave
        // `st=2029-12-31T23%3A00%3A00Z&se=2030-01-01T00%3A00%3A00Z&sp=rwdlac&sv=2026-10-06&ss=b
        // &srt=sco&sig=zO4bdTBL/TSCamDuo3QwX/8ODVRCBdIMzB73VUgBbfA%3D`.
        let sas = AccountSas {
            account: "devstoreaccount1",
            permissions: "rwdlac",
            services: "b",
            resource_types: "sco",
            start: "2029-12-31T23:00:00Z",
            expiry: "2030-01-01T00:00:00Z",
            ip: "",
            protocol: "",
            version: "2026-10-06",
        };
        assert_eq!(sas.signature(&key()), PYTHON_SIG);
        assert!(
            sas.token(&key())
                .ends_with("&sig=zO4bdTBL%2FTSCamDuo3QwX%2F8ODVRCBdIMzB73VUgBbfA%3D")
        );
    }

    /// See [`signature_matches_microsofts_python_client`].
    const PYTHON_SIG: &str = "zO4bdTBL/TSCamDuo3QwX/8ODVRCBdIMzB73VUgBbfA=";

    #[test]
    fn a_minted_token_is_short_lived_and_renewed() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let t = mint("devstoreaccount1", &key(), now, SAS_LIFETIME);
        assert!(t.contains("st=2030-03-17T17%3A41%3A40Z"), "{t}");
        assert!(t.contains("se=2030-03-17T18%3A46%3A40Z"), "{t}");
        assert!(t.contains("sp=rwdlac") && t.contains("ss=b") && t.contains("srt=sco"));
        // the policy mints once and reuses the token until it is near expiry
        let p = SasPolicy::minted("devstoreaccount1".into(), Sensitive::new(key()));
        let a = p.token();
        let b = p.token();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.expose().contains("sig="));
        assert!(!format!("{p:?}").contains("sig"));
    }
}
