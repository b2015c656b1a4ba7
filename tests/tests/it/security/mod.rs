//! Hardening: escaping of template values in HTML, secrets kept out of help
//! text, bounds on what wrong keys can cost and who they lock out, and the
//! API's request timeout.

mod admin_lockout;
mod auth_flood;
mod escaping;
mod secrets;
mod timeout;

use std::time::Duration;

use herald::{db::keys::Scope, model::Channel};
use herald_tests::{Client, TestEnv, fakes::smtp::SmtpFake};
use reqwest::Method;
use serde_json::{Value, json};
