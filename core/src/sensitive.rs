//! [`Sensitive`]: a wrapper whose `Debug` and `Display` never show the value.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret or personal value. `Debug` and `Display` print `**REDACTED**`, so a config struct
/// holding one can derive `Debug` safely.
///
/// ```
/// use keylink_core::Sensitive;
/// let s = Sensitive::new("hunter2".to_string());
/// assert_eq!(format!("{s:?} {s}"), "**REDACTED** **REDACTED**");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Sensitive(value)
    }

    /// The value. Call this only where the value is used, never to log it.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

impl<T> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**REDACTED**")
    }
}

impl<T> From<T> for Sensitive<T> {
    fn from(value: T) -> Self {
        Sensitive(value)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Sensitive<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Sensitive)
    }
}

impl<T: Serialize> Serialize for Sensitive<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// The schema of the value (a secret is written like any other value of its type).
impl<T: schemars::JsonSchema> schemars::JsonSchema for Sensitive<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_in_debug_of_containing_struct() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Creds {
            user: String,
            secret: Sensitive<String>,
        }
        let c: Creds = serde_json::from_str(r#"{"user":"u","secret":"s3cr3t-value"}"#).unwrap();
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("REDACTED"));
        assert_eq!(c.secret.expose(), "s3cr3t-value");
    }
}
