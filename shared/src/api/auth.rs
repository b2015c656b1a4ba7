//! API-key authentication, scopes and the per-key rate limit.
//!
//! A key seen valid is cached for [`CACHE_TTL`], so known keys cost no
//! database work. Unknown keys do, which a flood of random keys could turn
//! into a denial of service: every pool connection busy looking up keys that
//! do not exist while real requests wait for one. Two bounds prevent that:
//! lookups of keys not seen valid before share a few permits (a quarter of
//! the pool) and give up quickly when none is free (503, `Retry-After`), and
//! each client address may fail only so often (429 once its failures are
//! used up, without a lookup). A key that was valid at its last lookup
//! (cached, maybe stale) skips both, so a real client is never queued behind
//! a flood.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts},
};
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::{AppState, attempts::FailedAttempts, client::ClientIp, problem::ApiError};
use crate::db::keys::{self, KeyGrant, Scope};

/// How long a looked-up key is trusted before the database is asked again:
/// revoking a key takes effect within this time.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most keys cached; past it the cache starts afresh (keys are few).
const CACHE_MAX: usize = 10_000;
/// How long a lookup of an unknown key waits for a permit before the
/// request is answered 503: long enough to ride out a burst of new keys,
/// short enough that a flood is refused at once.
const LOOKUP_WAIT: Duration = Duration::from_millis(250);
/// Wrong keys one client address may present in a burst, and per second
/// after it. A service with a revoked key fails this fast; a guesser gets
/// five guesses a second at 256-bit keys.
const FAILURE_BURST: u32 = 20;
const FAILURES_PER_SEC: f64 = 5.0;
/// Client addresses tracked for failures; beyond it the least-failing make room.
const FAILURE_CLIENTS: usize = 10_000;

/// Verifies keys, with a short-lived cache in front of the database and
/// bounds on what unknown keys may cost.
pub struct KeyVerifier {
    cache: Mutex<HashMap<Vec<u8>, (KeyGrant, Instant)>>,
    limiter: Option<DefaultKeyedRateLimiter<Uuid>>,
    lookups: Semaphore,
    failures: FailedAttempts,
}

impl KeyVerifier {
    /// A verifier allowing `rate_per_sec` requests per key (0 = unlimited)
    /// and `lookup_slots` concurrent database lookups of unknown keys.
    pub fn new(rate_per_sec: u32, lookup_slots: usize) -> Arc<Self> {
        Arc::new(Self {
            cache: Mutex::new(HashMap::new()),
            limiter: NonZeroU32::new(rate_per_sec)
                .map(|rate| RateLimiter::keyed(Quota::per_second(rate))),
            lookups: Semaphore::new(lookup_slots.max(1)),
            failures: FailedAttempts::new(FAILURE_BURST, FAILURES_PER_SEC, FAILURE_CLIENTS),
        })
    }

    /// Lookup permits for a pool of `max_connections`: a quarter of it, so
    /// at least three quarters always serve requests with a valid key.
    pub fn lookup_slots(max_connections: u32) -> usize {
        (max_connections as usize / 4).max(1)
    }

    async fn verify(
        &self,
        pool: &sqlx::PgPool,
        key: &str,
        client: ClientIp,
    ) -> Result<KeyGrant, ApiError> {
        let hash = keys::hash(key);
        let known = match self.cache.lock().expect("not poisoned").get(&hash) {
            Some((grant, at)) if at.elapsed() < CACHE_TTL => return Ok(grant.clone()),
            Some(_) => true,
            None => false,
        };
        let _permit = if known {
            None
        } else {
            if let Err(wait) = self.failures.check(client) {
                metrics::counter!("herald_api_key_lookups_refused_total", "reason" => "client_failures")
                    .increment(1);
                return Err(ApiError::TooManyFailures(
                    wait.as_secs_f64().ceil().max(1.0) as u64,
                ));
            }
            match tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                _ => {
                    metrics::counter!("herald_api_key_lookups_refused_total", "reason" => "busy")
                        .increment(1);
                    return Err(ApiError::Busy);
                }
            }
        };
        let Some(grant) = keys::find(pool, key).await? else {
            self.cache.lock().expect("not poisoned").remove(&hash);
            if self.failures.record(client) {
                tracing::warn!(client = %client.ip(), "too many unknown API keys from one address; refusing its new keys for a while");
            }
            return Err(ApiError::Unauthorized);
        };
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(hash, (grant.clone(), Instant::now()));
        Ok(grant)
    }

    fn check_rate(&self, key_id: Uuid) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&key_id).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!("herald_api_rate_limited_total").increment(1);
            ApiError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64)
        })
    }

    /// Forgets rate-limit state of idle keys and clients that stopped
    /// failing; run periodically to bound memory.
    pub fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
        self.failures.prune();
    }
}

/// The caller, once its key is verified and within its rate.
#[derive(Debug, Clone)]
pub struct Auth {
    pub tenant: String,
    pub scopes: Vec<Scope>,
}

impl Auth {
    /// Fails with 403 unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope.as_str()))
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = ClientIp::from_request_parts(parts, state)
            .await
            .unwrap_or_else(|never| match never {});
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let grant = state.keys.verify(&state.pool, key, client).await?;
        state.keys.check_rate(grant.key_id)?;
        Ok(Auth {
            tenant: grant.tenant_id,
            scopes: grant.scopes,
        })
    }
}
