//! Herald's black-box integration tests, one binary: real RabbitMQ and
//! PostgreSQL, an isolated database and broker prefix per test.

mod api;
mod bad_input;
mod contract;
mod delivery;
mod erasure;
mod events;
mod faults_kit;
mod ingest;
mod inline_routing;
mod operators;
mod providers;
mod receipts;
mod reliability;
mod routing;
mod security;
mod sharding;
mod suppressions;
mod traces;
mod webhooks;
