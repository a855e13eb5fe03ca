//! JSON Schemas (draft 2020-12) of the files keylink reads — the batch job, the config file and
//! the data contract — generated with [`schemars`] from the config types and their doc comments,
//! for editors (`keylink schema job|config|contract`).
//!
//! Connectors, formats and key stores are trait objects: their schema is a `oneOf` over the
//! components in the [registry], each of which brings its config's schema
//! ([`Component::schema`](crate::registry::Component::schema), usually [`of::<Config>`](of)). A
//! third party's component appears in the schema of the binary it is compiled into without any
//! change here.
//!
//! The schemas follow the deserializers: `deny_unknown_fields` becomes
//! `additionalProperties: false`, serde aliases are listed as properties of their own
//! ([`with_alias`]), and types with hand-written `Deserialize` impls have hand-written schemas.

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};
use serde_json::{Map, Value};

use crate::connector::ConnectorConfig;
use crate::format::FormatConfig;
use crate::keystore::KeyStoreConfig;
use crate::registry::{self, Kind};

/// A generator for draft 2020-12 schemas of what keylink deserializes.
pub fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
}

/// The schema of a batch job file ([`BatchJob`](crate::job::BatchJob)).
pub fn job() -> Schema {
    titled(
        generator().into_root_schema_for::<crate::job::BatchJob>(),
        "keylink batch job",
    )
}

/// The schema of a stream job file ([`StreamJob`](crate::stream_job::StreamJob)).
pub fn stream_job() -> Schema {
    titled(
        generator().into_root_schema_for::<crate::stream_job::StreamJob>(),
        "keylink stream job",
    )
}

/// The schema of keylink's config file ([`Config`](crate::job::Config), `keylink.yaml`).
pub fn config() -> Schema {
    titled(
        generator().into_root_schema_for::<crate::job::Config>(),
        "keylink config",
    )
}

/// The schema of a data contract file (camelCase or snake_case keys, optionally wrapped as
/// `{"dataContract": {...}}`).
pub fn contract() -> Schema {
    titled(
        generator().into_root_schema_for::<crate::contract::ContractDocument>(),
        "keylink data contract",
    )
}

fn titled(mut s: Schema, title: &str) -> Schema {
    s.insert("title".into(), title.into());
    s
}

/// A component's config schema, for [`Component::schema`](crate::registry::Component::schema):
/// `schema: keylink_core::schema::of::<MyConfig>`.
pub fn of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// Lists `alias` as a property of `schema` next to `name`, as serde's `#[serde(alias)]` accepts
/// it: the same schema, at most one of the two (serde rejects both as a duplicate field), and
/// one of the two when `name` is required. For `#[schemars(transform = …)]` closures.
pub fn with_alias(schema: &mut Schema, name: &str, alias: &str) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    let Some(Value::Object(props)) = obj.get_mut("properties") else {
        return;
    };
    let Some(prop) = props.get(name).cloned() else {
        return;
    };
    props.insert(alias.to_string(), prop);
    let mut all = vec![json_schema!({ "not": { "required": [name, alias] } }).to_value()];
    if let Some(Value::Array(required)) = obj.get_mut("required")
        && let Some(i) = required.iter().position(|r| r == name)
    {
        required.remove(i);
        if required.is_empty() {
            obj.remove("required");
        }
        all.push(
            json_schema!({ "anyOf": [{ "required": [name] }, { "required": [alias] }] }).to_value(),
        );
    }
    push_all_of(obj, all);
}

/// Adds the snake_case alias of every camelCase property (`keyField` → `key_field`): the data
/// contract's keys.
pub fn with_snake_case_aliases(schema: &mut Schema) {
    let names: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| {
            p.keys()
                .filter(|k| k.chars().any(|c| c.is_ascii_uppercase()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for name in names {
        with_alias(schema, &name, &snake_case(&name));
    }
}

fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Requires one of `names` (a check the deserializer's caller makes, such as the job's
/// `event_contract_ref` or `data_contract_ref`).
pub fn require_one_of(schema: &mut Schema, names: &[&str]) {
    let any: Vec<Value> = names
        .iter()
        .map(|n| json_schema!({ "required": [n] }).to_value())
        .collect();
    push_all_of(
        schema.ensure_object(),
        vec![json_schema!({ "anyOf": any }).to_value()],
    );
}

/// Requires `names` where the type's own schema does not (a check made after deserializing, such
/// as a source's `data_type`); for `#[schemars(transform = …)]` on a field.
pub fn require(schema: &mut Schema, names: &[&str]) {
    let obj = schema.ensure_object();
    match obj
        .entry("required")
        .or_insert_with(|| Value::Array(vec![]))
    {
        Value::Array(req) => req.extend(names.iter().map(|n| Value::from(*n))),
        other => *other = names.iter().map(|n| Value::from(*n)).collect(),
    }
}

/// A target's checks: a non-empty `file_name` (see [`BatchJob`](crate::job::BatchJob)).
pub fn target_needs_file_name(schema: &mut Schema) {
    require(schema, &["file_name"]);
    schema.ensure_object().insert(
        "properties".into(),
        json_schema!({ "file_name": { "type": "string", "minLength": 1 } }).to_value(),
    );
}

/// A job's checks beyond its fields: a contract reference and an output.
pub(crate) fn job_checks(schema: &mut Schema) {
    require_one_of(schema, &["event_contract_ref", "data_contract_ref"]);
    let outputs = json_schema!({ "anyOf": [
        { "required": ["encrypted_data"] },
        { "required": ["derived_data"], "properties": { "derived_data": { "minItems": 1 } } },
    ] });
    push_all_of(schema.ensure_object(), vec![outputs.to_value()]);
}

fn push_all_of(obj: &mut Map<String, Value>, items: Vec<Value>) {
    match obj.get_mut("allOf") {
        Some(Value::Array(all)) => all.extend(items),
        _ => {
            obj.insert("allOf".into(), Value::Array(items));
        }
    }
}

/// `oneOf` over the registered components of `kind`, each in its JSON shape: internally tagged
/// by `type` (connectors, key stores) or externally tagged (`{ "csv": {…} }`, formats).
fn components_schema(generator: &mut SchemaGenerator, kind: Kind) -> Schema {
    let variants: Vec<Value> = registry::of_kind(kind)
        .into_iter()
        .map(|c| {
            let mut s = (c.schema)(generator);
            match kind {
                Kind::Format => json_schema!({
                    "type": "object",
                    "properties": { (c.name): s },
                    "required": [c.name],
                    "additionalProperties": false,
                    "description": c.description,
                })
                .to_value(),
                Kind::Connector | Kind::KeyStore => {
                    let obj = s.ensure_object();
                    let props = obj
                        .entry("properties")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(props) = props {
                        let tag = json_schema!({ "const": c.name, "description": c.description });
                        props.insert("type".into(), tag.to_value());
                    }
                    match obj
                        .entry("required")
                        .or_insert_with(|| Value::Array(vec![]))
                    {
                        Value::Array(req) => req.insert(0, "type".into()),
                        other => *other = Value::Array(vec!["type".into()]),
                    }
                    s.to_value()
                }
            }
        })
        .collect();
    json_schema!({ "oneOf": variants })
}

macro_rules! registry_schema {
    ($trait:ident, $kind:expr, $name:literal) => {
        impl JsonSchema for dyn $trait {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn json_schema(generator: &mut SchemaGenerator) -> Schema {
                components_schema(generator, $kind)
            }
        }
    };
}

registry_schema!(ConnectorConfig, Kind::Connector, "Connector");
registry_schema!(FormatConfig, Kind::Format, "Format");
registry_schema!(KeyStoreConfig, Kind::KeyStore, "KeyStore");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_accept_either_name_not_both() {
        let mut s = json_schema!({
            "type": "object",
            "properties": { "keyField": { "type": "string" } },
            "required": ["keyField"],
            "additionalProperties": false,
        });
        with_snake_case_aliases(&mut s);
        let v = s.to_value();
        assert!(v.pointer("/properties/key_field").is_some(), "{v}");
        assert!(v.get("required").is_none(), "{v}");
        assert_eq!(v["allOf"].as_array().map(Vec::len), Some(2), "{v}");
    }

    #[test]
    fn snake_case_of_camel_case() {
        assert_eq!(snake_case("personalDataConfig"), "personal_data_config");
        assert_eq!(snake_case("ref"), "ref");
    }
}
