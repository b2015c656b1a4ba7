//! Domain types shared by every process. Values here are parsed at the edge
//! (HTTP or AMQP) so that an invalid one cannot travel further.

/// `TryFrom<String>` by way of the type's `parse`, and `From<T> for
/// String`: the conversions serde goes through (`try_from`, `into`), so
/// that a deserialized value has passed its `parse`.
macro_rules! string_conversions {
    ($name:ident, $error:ty) => {
        impl TryFrom<String> for $name {
            type Error = $error;
            fn try_from(value: String) -> Result<Self, $error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

mod channel;
mod field;
mod ids;
pub mod message;
pub mod notification;
pub mod policy;
pub mod preferences;
pub mod suppression;
pub mod template;
pub mod user;

pub use channel::{Channel, Lane};
pub use field::{FieldError, FieldErrors, find_nul, from_value};
pub use ids::{Category, IdempotencyKey, TenantId, TopicName, UserId};
