//! OAuth2 access tokens for FCM from a Google service account: the JWT-bearer
//! grant (RFC 7523), the flow Google's own admin SDKs use server-side.

use std::{
    fmt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Client, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::providers::{
    ErrorClass, Outcome,
    http::{Refusal, exchange, snippet},
};

/// Google's token endpoint, used when the credentials file names none.
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// The one scope FCM's send API needs; asking for less than the account
/// may do limits what a leaked token is good for.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Google caps an assertion's lifetime at one hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// How long before its expiry a cached token is replaced: five minutes, so a
/// token never expires between being read and being used on a slow request.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A Google service account: the parts of its JSON credentials file that
/// the JWT-bearer grant needs.
pub struct ServiceAccount {
    /// The account's email, the assertion's issuer.
    pub client_email: String,
    /// Where access tokens are granted (the assertion's audience).
    pub token_uri: String,
    /// The Firebase project the account belongs to, if the file says.
    pub project_id: Option<String>,
    key: EncodingKey,
}

#[derive(Deserialize)]
struct CredentialsFile {
    client_email: String,
    project_id: Option<String>,
    private_key: SecretString,
    token_uri: Option<String>,
}

impl ServiceAccount {
    /// Reads a service-account credentials file. `token_url` (`FCM_TOKEN_URL`)
    /// overrides the file's `token_uri`.
    pub fn from_file(path: &Path, token_url: Option<&str>) -> anyhow::Result<Self> {
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("reading FCM credentials file {}", path.display()))?;
        Self::from_json(&json, token_url)
            .with_context(|| format!("FCM credentials file {}", path.display()))
    }

    /// Parses service-account credentials JSON; fails on a missing field or a
    /// private key that is not an RSA PEM, so a bad file stops startup.
    pub fn from_json(json: &str, token_url: Option<&str>) -> anyhow::Result<Self> {
        let file: CredentialsFile =
            serde_json::from_str(json).context("not service-account credentials JSON")?;
        let key = EncodingKey::from_rsa_pem(file.private_key.expose_secret().as_bytes())
            .context("`private_key` is not an RSA private key in PEM form")?;
        let token_uri = token_url
            .map(str::to_owned)
            .or(file.token_uri)
            .unwrap_or_else(|| DEFAULT_TOKEN_URL.to_owned());
        Ok(Self {
            client_email: file.client_email,
            token_uri,
            project_id: file.project_id,
            key,
        })
    }

    /// A signed assertion asking for an FCM-scoped token.
    fn assertion(&self) -> anyhow::Result<String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: &'a str,
            aud: &'a str,
            iat: u64,
            exp: u64,
        }
        // Backdated a little: Google refuses an `iat` in its future, and our
        // clock may run ahead of theirs.
        let iat = jsonwebtoken::get_current_timestamp().saturating_sub(30);
        let claims = Claims {
            iss: &self.client_email,
            scope: FCM_SCOPE,
            aud: &self.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .context("signing the FCM token assertion")
    }
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

struct Cached {
    token: SecretString,
    refresh_at: Instant,
}

/// Access tokens for one service account, cached until shortly before they
/// expire and shared by every send.
pub(super) struct TokenSource {
    account: ServiceAccount,
    // A tokio mutex held across the token request: concurrent sends that
    // find no valid token wait for one request instead of each making one.
    cached: Mutex<Option<Cached>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenSource {
    pub(super) fn new(account: ServiceAccount) -> Self {
        Self {
            account,
            cached: Mutex::new(None),
        }
    }

    /// A valid access token, from the cache or freshly granted. A failure is
    /// already classified as the send's outcome.
    pub(super) async fn token(&self, http: &Client) -> Result<SecretString, Outcome> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        let granted = self.grant(http).await?;
        let lifetime = Duration::from_secs(granted.expires_in);
        let token = granted.access_token;
        *cached = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN.min(lifetime / 2)),
        });
        Ok(token)
    }

    /// Drops `stale` from the cache after FCM refused it, unless another send
    /// already replaced it.
    pub(super) async fn invalidate(&self, stale: &SecretString) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|c| c.token.expose_secret() == stale.expose_secret())
        {
            *cached = None;
        }
    }

    async fn grant(&self, http: &Client) -> Result<TokenResponse, Outcome> {
        let assertion = self.account.assertion().map_err(|err| Outcome::Permanent {
            class: ErrorClass::Config,
            reason: format!("fcm: {err:#}"),
            deactivate: false,
        })?;
        let request = http.post(&self.account.token_uri).form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ]);
        let answer = exchange("fcm token", request).await?;
        if answer.status.is_success() {
            return serde_json::from_str(&answer.body).map_err(|err| Outcome::Retry {
                class: ErrorClass::Server,
                reason: format!("fcm token: unreadable token response: {err}"),
                after: None,
            });
        }
        Err(classify_token_error(
            answer.status,
            &answer.body,
            answer.after,
        ))
    }
}

/// Classifies a refused token request. Google answers a bad key, a deleted
/// account or a wrong audience with 400 `invalid_grant` (or 401
/// `invalid_client`): retrying cannot fix those, so they are `Auth`.
fn classify_token_error(status: StatusCode, body: &str, after: Option<Duration>) -> Outcome {
    let err: TokenError = serde_json::from_str(body).unwrap_or_default();
    let reason = if err.error.is_empty() {
        format!("fcm token: HTTP {status}: {}", snippet(body, 200))
    } else {
        format!(
            "fcm token: HTTP {status} {}: {}",
            err.error, err.error_description
        )
    };
    Refusal { reason, after }.by_status(status, ErrorClass::Auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_errors() {
        let bad_grant = classify_token_error(
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
            None,
        );
        assert!(matches!(
            bad_grant,
            Outcome::Permanent { class: ErrorClass::Auth, ref reason, .. } if reason.contains("Invalid JWT Signature")
        ));
        assert!(matches!(
            classify_token_error(StatusCode::SERVICE_UNAVAILABLE, "", None),
            Outcome::Retry {
                class: ErrorClass::Server,
                ..
            }
        ));
    }

    #[test]
    fn rejects_a_non_rsa_key() {
        let json = r#"{"client_email":"a@b.iam.gserviceaccount.com","private_key":"nope"}"#;
        let err = ServiceAccount::from_json(json, None).unwrap_err();
        assert!(format!("{err:#}").contains("RSA private key"));
    }
}
