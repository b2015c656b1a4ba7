//! Signed webhooks (PRODUCT.md, "Webhooks"): the parts that stand on their
//! own, ready for the endpoint registry and the sender to build on.
//!
//! - [`signature`]: signing secrets and signatures per the Standard Webhooks
//!   specification, checked against its published test vectors.
//! - [`address`]: which addresses an endpoint may resolve to (never private,
//!   loopback or link-local unless allow-listed).
//!
//! Registering endpoints (`/v1/webhooks`) and sending events to them are not
//! built yet (docs/events.md, "Webhooks").

pub mod address;
pub mod filter;
pub mod send;
pub mod signature;
