//! Herald's black-box integration tests, one binary: real RabbitMQ and
//! PostgreSQL, an isolated database and broker prefix per test.

mod api;
mod delivery;
mod faults_kit;
mod ingest;
mod operators;
mod providers;
mod routing;
