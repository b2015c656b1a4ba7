//! Who may use the admin pages: the holder of `ADMIN_API_KEY`, presented as
//! `Authorization: Bearer <key>` (scripts) or once on the login form, which
//! sets a session cookie (browsers).
//!
//! Nothing derived from the key is stored but its SHA-256. The session cookie
//! and the replay form's token are HMAC-SHA256 signatures under that hash,
//! with an expiry: rotating the key ends every session and voids every
//! pending confirmation, and the cookie never holds the key itself.

use std::time::Duration;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use cookie::{Cookie, SameSite};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::html;
use crate::api::{AppState, attempts::FailedAttempts, client::ClientIp, problem::ApiError};

/// Name of the session cookie.
pub const COOKIE: &str = "herald_admin";
/// How long a login lasts: a working day, so a forgotten browser tab does
/// not stay signed in for good.
const SESSION: Duration = Duration::from_secs(12 * 3600);
/// How long a replay confirmation stays valid: long enough to read the page,
/// short enough that an old tab cannot replay a filter seen yesterday.
const CONFIRMATION: Duration = Duration::from_secs(15 * 60);
/// Wrong keys one client address may present in a burst, and per second
/// after it, before its key attempts are answered 429. Per address, so a
/// guesser locks out only itself, never the other admins. The key is long
/// and random: this only makes guessing loud and slow.
const FAILURE_BURST: u32 = 10;
const FAILURES_PER_SEC: f64 = 1.0;
/// Client addresses tracked; beyond it the least-failing make room.
const FAILURE_CLIENTS: usize = 10_000;

/// The admin key's hash and the failed attempts per client.
pub struct AdminAuth {
    key_hash: [u8; 32],
    failures: FailedAttempts,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminAuth { .. }")
    }
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl AdminAuth {
    /// Authentication against `key`.
    pub fn new(key: &SecretString) -> Self {
        Self {
            key_hash: sha256(key.expose_secret()),
            failures: FailedAttempts::new(FAILURE_BURST, FAILURES_PER_SEC, FAILURE_CLIENTS),
        }
    }

    /// Whether `presented` is the admin key, compared in constant time. A
    /// wrong key counts against `client`; a client out of attempts is
    /// refused without its key being looked at, even the right one.
    pub fn check_key(&self, presented: &str, client: ClientIp) -> Result<bool, Blocked> {
        self.failures
            .check(client)
            .map_err(|wait| Blocked(wait.as_secs_f64().ceil().max(1.0) as u64))?;
        let ok: bool = sha256(presented).ct_eq(&self.key_hash).into();
        if !ok && self.failures.record(client) {
            tracing::warn!(client = %client.ip(), "too many wrong admin keys from one address; refusing its key attempts for a while");
        }
        Ok(ok)
    }

    /// Forgets clients that stopped failing; run periodically.
    pub fn prune(&self) {
        self.failures.prune();
    }

    fn signature(&self, purpose: &str, expires: i64, payload: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key_hash).expect("any key length");
        mac.update(format!("{purpose}\n{expires}\n{payload}").as_bytes());
        mac
    }

    fn sign(&self, purpose: &str, valid_for: Duration, payload: &str) -> String {
        let expires = now_secs() + valid_for.as_secs() as i64;
        let tag = self.signature(purpose, expires, payload).finalize();
        format!("{expires}.{}", hex::encode(tag.into_bytes()))
    }

    fn verify(&self, purpose: &str, token: &str, payload: &str) -> bool {
        let Some((expires, tag)) = token.split_once('.') else {
            return false;
        };
        let (Ok(expires), Ok(tag)) = (expires.parse::<i64>(), hex::decode(tag)) else {
            return false;
        };
        expires > now_secs()
            && self
                .signature(purpose, expires, payload)
                .verify_slice(&tag)
                .is_ok()
    }

    /// A fresh session cookie's value.
    pub fn session(&self) -> String {
        self.sign("session", SESSION, "")
    }

    /// The `Set-Cookie` value of a new session. `Secure` when the request
    /// reached the proxy over HTTPS; plain HTTP only on a local port-forward.
    pub fn session_cookie(&self, secure: bool) -> String {
        session_cookie(self.session(), SESSION)
            .secure(secure)
            .build()
            .to_string()
    }

    /// The token a replay confirmation form carries, bound to exactly the
    /// selection it confirmed.
    pub fn replay_token(&self, selection: &str) -> String {
        self.sign("replay", CONFIRMATION, selection)
    }

    /// Whether `token` confirms `selection` and has not expired.
    pub fn replay_token_valid(&self, token: &str, selection: &str) -> bool {
        self.verify("replay", token, selection)
    }

    /// The token a one-action form (such as a remove button) carries, bound
    /// to `purpose` and exactly the object `payload` names.
    pub fn action_token(&self, purpose: &str, payload: &str) -> String {
        self.sign(purpose, CONFIRMATION, payload)
    }

    /// Whether `token` was signed for `purpose` and `payload` and has not
    /// expired.
    pub fn action_token_valid(&self, purpose: &str, token: &str, payload: &str) -> bool {
        self.verify(purpose, token, payload)
    }

    fn session_valid(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(Cookie::split_parse)
            .filter_map(Result::ok)
            .filter(|c| c.name() == COOKIE)
            .any(|c| self.verify("session", c.value(), ""))
    }
}

/// Too many wrong keys from this client lately; retry after this many seconds.
#[derive(Debug)]
pub struct Blocked(pub u64);

/// The session cookie with `value`, living `max_age`: only sent to the admin
/// pages, never to scripts, never from another site.
fn session_cookie(value: String, max_age: Duration) -> cookie::CookieBuilder<'static> {
    Cookie::build((COOKIE, value))
        .path("/admin")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(max_age.as_secs() as i64))
}

/// A cookie that ends the session.
pub fn clear_cookie() -> String {
    session_cookie(String::new(), Duration::ZERO)
        .build()
        .to_string()
}

/// Whether the client reached us over HTTPS (through the ingress).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// An admin page request from a signed-in browser or a bearer of the key;
/// others are sent to the login form.
#[derive(Debug, Clone, Copy)]
pub struct AdminPage;

impl FromRequestParts<AppState> for AdminPage {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(admin) = &state.admin else {
            return Err(StatusCode::NOT_FOUND.into_response());
        };
        if admin.auth.session_valid(&parts.headers) {
            return Ok(AdminPage);
        }
        let client = ClientIp::from_request_parts(parts, state)
            .await
            .unwrap_or_else(|never| match never {});
        if let Some(key) = bearer(&parts.headers) {
            return match admin.auth.check_key(key, client) {
                Ok(true) => Ok(AdminPage),
                Ok(false) => Err(html::error_page(
                    StatusCode::UNAUTHORIZED,
                    "That is not the admin key.",
                )),
                Err(Blocked(_)) => Err(html::error_page(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many wrong keys; try again shortly.",
                )),
            };
        }
        let target = parts.uri.path_and_query().map_or("/admin", |p| p.as_str());
        let next = if parts.method == axum::http::Method::GET {
            target
        } else {
            "/admin"
        };
        Err(Redirect::to(&format!("/admin/login?next={}", html::url_encode(next))).into_response())
    }
}

/// A request to the admin JSON API: bearer of the admin key only (no
/// cookie, so no cross-site request can use a browser's session).
#[derive(Debug, Clone, Copy)]
pub struct AdminApi;

impl FromRequestParts<AppState> for AdminApi {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let admin = state.admin.as_ref().ok_or(ApiError::NotFound("route"))?;
        let client = ClientIp::from_request_parts(parts, state)
            .await
            .unwrap_or_else(|never| match never {});
        let key = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
        match admin.auth.check_key(key, client) {
            Ok(true) => Ok(AdminApi),
            Ok(false) => Err(ApiError::Unauthorized),
            Err(Blocked(wait)) => Err(ApiError::TooManyFailures(wait)),
        }
    }
}

/// Only a path inside the admin pages is a place to go after logging in,
/// so the login form cannot be used to bounce a browser elsewhere.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if (n == "/admin" || n.starts_with("/admin/") || n.starts_with("/admin?"))
                && !n.contains("//")
                && !n.contains('\\') =>
        {
            n
        }
        _ => "/admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_key_purpose_and_payload() {
        let auth = AdminAuth::new(&SecretString::from("k-1"));
        let other = AdminAuth::new(&SecretString::from("k-2"));
        let token = auth.replay_token("tenant=acme");
        assert!(auth.replay_token_valid(&token, "tenant=acme"));
        assert!(!auth.replay_token_valid(&token, "tenant=other"));
        assert!(!other.replay_token_valid(&token, "tenant=acme"));
        assert!(!auth.verify("session", &token, "tenant=acme"));
        assert!(!auth.replay_token_valid("1.00", "tenant=acme"));
        let session = auth.session();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={session}").parse().unwrap(),
        );
        assert!(auth.session_valid(&headers));
        assert!(!other.session_valid(&headers));
        let set = auth.session_cookie(true);
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/admin",
            "Max-Age=43200",
            "Secure",
        ] {
            assert!(set.contains(part), "{part} missing in {set}");
        }
        assert!(!auth.session_cookie(false).contains("Secure"));
        assert!(clear_cookie().contains("Max-Age=0"));
    }

    fn client(last: u8) -> ClientIp {
        ClientIp::new(std::net::IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn a_guesser_locks_out_only_itself() {
        let auth = AdminAuth::new(&SecretString::from("k-1"));
        for _ in 0..FAILURE_BURST {
            assert!(!auth.check_key("guess", client(1)).unwrap());
        }
        assert!(
            auth.check_key("k-1", client(1)).is_err(),
            "out of attempts: even the right key waits"
        );
        assert!(
            auth.check_key("k-1", client(2)).unwrap(),
            "another admin gets in"
        );
        assert!(!auth.check_key("typo", client(2)).unwrap());
    }

    #[test]
    fn keys_compare_and_next_stays_inside() {
        let auth = AdminAuth::new(&SecretString::from("k-1"));
        assert!(auth.check_key("k-1", client(1)).unwrap());
        assert!(!auth.check_key("k-2", client(1)).unwrap());
        assert_eq!(
            safe_next(Some("/admin/dead-letters?x=1")),
            "/admin/dead-letters?x=1"
        );
        assert_eq!(safe_next(Some("https://evil.example/")), "/admin");
        assert_eq!(safe_next(Some("/admin//evil.example")), "/admin");
        assert_eq!(safe_next(Some("/adminx")), "/admin");
    }
}
