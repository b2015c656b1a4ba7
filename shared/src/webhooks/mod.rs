//! Signed webhooks (PRODUCT.md, "Webhooks"; docs/events.md says how they
//! are built). The endpoints are registered through the API
//! (`api/webhooks.rs`) and stored in `db::webhooks`.
//!
//! - [`signature`]: signing secrets and signatures per the Standard Webhooks
//!   specification, checked against its published test vectors.
//! - [`address`]: which addresses an endpoint may resolve to (never private,
//!   loopback or link-local unless allow-listed).
//! - [`filter`]: which events an endpoint wants.
//! - [`send`]: the fan-out of a batch of events to endpoints, and the sender.
//! - [`disabled`]: the `herald.webhook.disabled` event the sender publishes
//!   when it disables an endpoint.

pub mod address;
pub mod disabled;
pub mod filter;
pub mod send;
pub mod signature;
