//! Herald: a notification fan-out pipeline around RabbitMQ and PostgreSQL.
//!
//! One module per concern. Dependencies point one way: `api` uses `intake`,
//! `broker` and `db`; `routing` and `delivery` use `broker`, `db` and `model`;
//! `providers` are plain protocol clients that know nothing of the rest.

pub mod api;
pub mod broker;
pub mod config;
pub mod ctl;
pub mod db;
pub mod delivery;
pub mod dlq;
pub mod events;
pub mod gather;
pub mod intake;
pub mod model;
pub mod ops;
pub mod outage;
pub mod priority;
pub mod providers;
pub mod receipts;
pub mod routing;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod text;
pub mod webhooks;
