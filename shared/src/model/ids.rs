//! Identifier newtypes. Each has one `parse` that enforces its rules.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("may contain only letters, digits and {0}")]
    BadChar(&'static str),
}

fn check(value: &str, max: usize, extra: &'static str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.chars().count() > max {
        return Err(IdError::TooLong(max));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    {
        return Err(IdError::BadChar(extra));
    }
    Ok(())
}

/// The OpenAPI schema of an identifier: 1 to `max` characters, letters,
/// digits and `extra`.
fn id_schema(max: usize, extra: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    // A `-` stands last in the character class, where it means itself.
    let mut class: String = extra.chars().filter(|c| *c != '-').collect();
    if extra.contains('-') {
        class.push('-');
    }
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(format!("^[A-Za-z0-9{class}]+$")))
        .into()
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $max:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value, in characters.
            pub const MAX_LEN: usize = $max;

            /// Parses and validates the identifier.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check(&value, $max, $extra)?;
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        string_conversions!($name, IdError);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema($max, $extra)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

id_type!(
    /// A tenant's id, chosen by the operator (`acme`, `shop-eu`). It is also the
    /// routing key of event-driven ingest, so it has no `.`, `*` or `#`.
    TenantId, 64, "_-"
);
id_type!(
    /// A recipient's id in the calling service's own terms (`u-123`, an email hash ...).
    UserId, 128, "._:@+-"
);
id_type!(
    /// A topic name (`product-launch`, `team.42.alerts`).
    TopicName, 128, "._:-"
);
id_type!(
    /// A notification category (`order.shipped`, `security`, `marketing`);
    /// preferences and frequency caps key on it.
    Category, 100, "._:-"
);

/// The client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Longest accepted key, in characters (PRODUCT.md).
    pub const MAX_LEN: usize = 255;

    /// Parses and validates the key.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("must not be empty".into());
        }
        if value.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} characters", Self::MAX_LEN));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("may contain only visible ASCII characters".into());
        }
        Ok(Self(value.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_what_they_should() {
        assert!(TenantId::parse("acme-eu").is_ok());
        assert_eq!(TenantId::parse("a.b"), Err(IdError::BadChar("_-")));
        assert_eq!(UserId::parse(""), Err(IdError::Empty));
        assert_eq!(UserId::parse("x".repeat(129)), Err(IdError::TooLong(128)));
        assert!(Category::parse("order.shipped").is_ok());
        assert!(IdempotencyKey::parse("abc 1").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
    }
}
