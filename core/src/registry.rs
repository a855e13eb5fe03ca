//! The registry of components: every connector, format and key store compiled into a binary —
//! ours and a third party's alike — describes itself at its impl site with [`register!`](crate::register)
//! (collected at link time by [`inventory`], as `typetag` collects the deserializers). The
//! CLI's `--version`, `keylink list`, its registration test and `scheme://bucket/path`
//! locations all read this registry; no list of components is kept by hand.
//!
//! ```ignore
//! keylink_core::register!(keylink_core::registry::Component {
//!     kind: keylink_core::registry::Kind::Connector,
//!     name: "mystore",
//!     description: "MyStore buckets",
//!     example: r#"{ "type": "mystore", "bucket": "my-lake" }"#,
//!     schemes: &["my"],
//!     from_url: Some(|bucket, _config| {
//!         Ok(keylink_core::serde_json::json!({ "type": "mystore", "bucket": bucket }))
//!     }),
//!     schema: keylink_core::schema::of::<MyStoreConfig>,
//! });
//! ```
//!
//! The config's schema (for `keylink schema`) comes from
//! `#[derive(keylink_core::schemars::JsonSchema)]` with
//! `#[schemars(crate = "keylink_core::schemars")]` on the config struct:
//!
//! ```ignore
//! /// MyStore buckets.
//! #[derive(serde::Deserialize, keylink_core::schemars::JsonSchema)]
//! #[schemars(crate = "keylink_core::schemars")]
//! #[serde(deny_unknown_fields)]
//! pub struct MyStoreConfig {
//!     /// The bucket (every field's doc comment is its description in the schema).
//!     pub bucket: String,
//! }
//! ```

use std::fmt;

use crate::error::Result;
use crate::job::Config;

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A store of objects: `connectors: { NAME: { type: TAG, … } }`.
    Connector,
    /// A data format: `data_type: { TAG: { … } }`.
    Format,
    /// A key store: `key_store: { type: TAG, … }`.
    KeyStore,
}

impl Kind {
    /// `connector`, `format`, `key store`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connector => "connector",
            Kind::Format => "format",
            Kind::KeyStore => "key store",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Turns the first part of a `scheme://first/rest` location (a bucket, a container) into the
/// component's config as JSON, given the user's config (whose connectors may already name that
/// bucket with credentials).
pub type FromUrl = fn(first: &str, config: &Config) -> Result<serde_json::Value>;

/// A component's description.
#[derive(Clone, Copy)]
pub struct Component {
    /// What it is.
    pub kind: Kind,
    /// Its tag: `type` of a connector or key store, the key of a `data_type`.
    pub name: &'static str,
    /// One line for `keylink list`.
    pub description: &'static str,
    /// A minimal config, as JSON, that deserializes as the component (checked by tests).
    pub example: &'static str,
    /// The URL schemes whose locations it serves (`s3`, `gs`, `az`, `file`), connectors only.
    pub schemes: &'static [&'static str],
    /// How a `scheme://bucket/path` location becomes its config (connectors with schemes).
    pub from_url: Option<FromUrl>,
    /// The schema of its config (without the `type` tag, which the registry adds), usually
    /// [`schema::of::<TheConfig>`](crate::schema::of).
    pub schema: ComponentSchema,
}

/// Writes a component config's JSON Schema (see [`crate::schema`]).
pub type ComponentSchema = fn(&mut schemars::SchemaGenerator) -> schemars::Schema;

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Component")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("schemes", &self.schemes)
            .finish_non_exhaustive()
    }
}

inventory::collect!(Component);

/// Registers a [`Component`] (at the impl site of the component's config).
#[macro_export]
macro_rules! register {
    ($component:expr $(,)?) => {
        $crate::__private::inventory::submit! { $component }
    };
}

/// Every registered component, sorted by kind and name (one per kind and name: a duplicate
/// registration is a bug that [`duplicates`] reports).
pub fn components() -> Vec<&'static Component> {
    let mut all: Vec<&'static Component> = inventory::iter::<Component>.into_iter().collect();
    all.sort_by_key(|c| (c.kind, c.name));
    all.dedup_by_key(|c| (c.kind, c.name));
    all
}

/// The registered components of `kind`.
pub fn of_kind(kind: Kind) -> Vec<&'static Component> {
    components()
        .into_iter()
        .filter(|c| c.kind == kind)
        .collect()
}

/// Names registered more than once for one kind (two crates claiming one tag).
pub fn duplicates() -> Vec<(Kind, &'static str)> {
    let mut all: Vec<(Kind, &'static str)> = inventory::iter::<Component>
        .into_iter()
        .map(|c| (c.kind, c.name))
        .collect();
    all.sort();
    let mut dups: Vec<(Kind, &'static str)> = all
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    dups.dedup();
    dups
}

/// The connector serving `scheme://` locations.
pub fn for_scheme(scheme: &str) -> Option<&'static Component> {
    components()
        .into_iter()
        .find(|c| c.kind == Kind::Connector && c.schemes.contains(&scheme))
}

/// Every URL scheme served, sorted.
pub fn schemes() -> Vec<&'static str> {
    let mut s: Vec<&'static str> = components()
        .into_iter()
        .flat_map(|c| c.schemes.iter().copied())
        .collect();
    s.sort_unstable();
    s.dedup();
    s
}
