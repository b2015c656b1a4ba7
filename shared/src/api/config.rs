//! Settings of the `ingest` binary.

use std::{net::SocketAddr, time::Duration};

use axum::http::HeaderName;
use secrecy::{ExposeSecret, SecretString};

use crate::config::CommonConfig;

/// Settings of the `ingest` binary.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "ingest",
    about = "Herald's HTTP API and event-driven ingest",
    version
)]
pub struct IngestConfig {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub runtime: crate::runtime::RuntimeConfig,
    /// Listen address of the API (and /healthz, /readyz, /metrics).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Notifications naming at most this many users are routed by ingest
    /// inline: their deliveries are recorded in the commit that accepts
    /// them, and their delivery messages published in place of the routing
    /// message (one broker hop and the router's work saved). Topics, longer
    /// lists and categories the tenant caps go to the router. 0: every
    /// notification goes to the router.
    #[arg(long, env = "INLINE_ROUTING_MAX_USERS", default_value_t = 10)]
    pub inline_routing_max_users: usize,
    /// Requests per second one API key may make (0 = unlimited).
    #[arg(long, env = "API_KEY_RATE_PER_SEC", default_value_t = 1000)]
    pub api_key_rate_per_sec: u32,
    /// Longest time one API request may take before it is answered 503
    /// (a send whose commit has begun gets 10 s more to answer what
    /// happened). Well above a healthy request's milliseconds, below the
    /// usual 60 s of load balancers, so the client hears it from Herald.
    #[arg(long, env = "API_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub api_request_timeout: Duration,
    /// Header in which a trusted proxy names the client's address, e.g.
    /// `x-forwarded-for` (its last address is used). Unset: the TCP peer.
    /// Set it only when every request comes through that proxy, or clients
    /// can pick the address their failed attempts are counted against.
    #[arg(long, env = "CLIENT_IP_HEADER")]
    pub client_ip_header: Option<HeaderName>,
    /// Key of the admin pages under /admin (dead letters, replay). Unset: the
    /// admin pages do not exist (404). Use a long random value.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true, value_parser = secret)]
    pub admin_api_key: Option<SecretString>,
    /// Public base URL at which providers reach this ingest, e.g.
    /// `https://herald.example.com` (the SMS worker puts the same value in
    /// each message's status callback). Twilio signs the URL it called, so
    /// receipts from Twilio are verified against this, not against what a
    /// proxy forwarded. Unset: no Twilio receipts.
    #[arg(long, env = "RECEIPTS_BASE_URL")]
    pub receipts_base_url: Option<String>,
    /// Twilio auth token, which signs Twilio's status callbacks. Unset: no
    /// Twilio receipts.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true, value_parser = secret)]
    pub twilio_auth_token: Option<SecretString>,
    /// SendGrid's Event Webhook verification key, base64 of its DER public
    /// key as SendGrid shows it. Unset: no SendGrid receipts.
    #[arg(long, env = "SENDGRID_WEBHOOK_PUBLIC_KEY")]
    pub sendgrid_webhook_public_key: Option<String>,
    /// Networks (CIDR, comma-separated) webhook endpoints may resolve to
    /// besides public addresses, e.g. `10.20.0.0/16` for an internal
    /// receiver. Unset: public addresses only.
    #[arg(long, env = "WEBHOOK_ALLOWED_NETWORKS", value_delimiter = ',')]
    pub webhook_allowed_networks: Vec<crate::webhooks::address::Network>,
}

/// Wraps the key at once; its length is checked by [`IngestConfig::check`],
/// where the error can say what is wrong without echoing the value as clap
/// would.
fn secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.trim().to_owned()))
}

/// Shortest admin key accepted: a guessable key would open replay to anyone
/// who can reach ingest.
const ADMIN_KEY_MIN_LEN: usize = 16;

impl IngestConfig {
    /// Checks what clap cannot: the admin key's length, a non-zero timeout.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(key) = &self.admin_api_key
            && key.expose_secret().len() < ADMIN_KEY_MIN_LEN
        {
            anyhow::bail!("ADMIN_API_KEY must be at least {ADMIN_KEY_MIN_LEN} characters");
        }
        if self.api_request_timeout.is_zero() {
            anyhow::bail!("API_REQUEST_TIMEOUT must be greater than zero");
        }
        if let Some(url) = &self.receipts_base_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            anyhow::bail!(
                "RECEIPTS_BASE_URL must be an http(s) URL such as https://herald.example.com"
            );
        }
        self.receipt_keys()?;
        Ok(())
    }

    /// What verifies the providers' receipts, from these settings.
    pub fn receipt_keys(&self) -> anyhow::Result<super::receipts::ReceiptKeys> {
        let sendgrid_key = match &self.sendgrid_webhook_public_key {
            Some(text) => Some(
                crate::receipts::sendgrid::EventKey::parse(text)
                    .map_err(|e| anyhow::anyhow!("SENDGRID_WEBHOOK_PUBLIC_KEY {e}"))?,
            ),
            None => None,
        };
        Ok(super::receipts::ReceiptKeys {
            base_url: self.receipts_base_url.clone(),
            twilio_auth_token: self.twilio_auth_token.clone(),
            sendgrid_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn debug_never_shows_the_admin_key_or_passwords() {
        let config = IngestConfig::try_parse_from([
            "ingest",
            "--admin-api-key",
            "admin-0123456789abcdef",
            "--database-url",
            "postgres://herald:db-pass-1@db/herald",
            "--amqp-url",
            "amqp://herald:mq-pass-2@mq/%2f",
            "--api-request-timeout",
            "1500ms",
        ])
        .expect("parses");
        assert_eq!(config.api_request_timeout, Duration::from_millis(1500));
        let debug = format!("{config:?}");
        for secret in ["admin-0123456789abcdef", "db-pass-1", "mq-pass-2"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(config.check().is_ok());
    }

    #[test]
    fn short_admin_keys_and_zero_timeouts_are_refused() {
        let short = IngestConfig::try_parse_from(["ingest", "--admin-api-key", "short"]).unwrap();
        assert!(short.check().unwrap_err().to_string().contains("16"));
        let zero = IngestConfig::try_parse_from(["ingest", "--api-request-timeout", "0s"]).unwrap();
        assert!(zero.check().is_err());
    }
}
