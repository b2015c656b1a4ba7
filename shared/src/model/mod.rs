//! Domain types shared by every process. Values here are parsed at the edge
//! (HTTP or AMQP) so that an invalid one cannot travel further.

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
pub use field::{FieldError, FieldErrors, find_nul};
pub use ids::{Category, IdempotencyKey, TenantId, TopicName, UserId};
