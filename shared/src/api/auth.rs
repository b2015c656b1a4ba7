//! API-key authentication, scopes and the per-key rate limit.

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
use uuid::Uuid;

use super::{AppState, problem::ApiError};
use crate::db::keys::{self, KeyGrant, Scope};

/// How long a looked-up key is trusted before the database is asked again:
/// revoking a key takes effect within this time.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most keys cached; past it the cache starts afresh (keys are few).
const CACHE_MAX: usize = 10_000;

/// Verifies keys, with a short-lived cache in front of the database.
pub struct KeyVerifier {
    cache: Mutex<HashMap<Vec<u8>, (KeyGrant, Instant)>>,
    limiter: Option<DefaultKeyedRateLimiter<Uuid>>,
}

impl KeyVerifier {
    /// A verifier allowing `rate_per_sec` requests per key (0 = unlimited).
    pub fn new(rate_per_sec: u32) -> Arc<Self> {
        Arc::new(Self {
            cache: Mutex::new(HashMap::new()),
            limiter: NonZeroU32::new(rate_per_sec)
                .map(|rate| RateLimiter::keyed(Quota::per_second(rate))),
        })
    }

    async fn verify(&self, pool: &sqlx::PgPool, key: &str) -> Result<KeyGrant, ApiError> {
        let hash = keys::hash(key);
        if let Some((grant, at)) = self.cache.lock().expect("not poisoned").get(&hash)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(grant.clone());
        }
        let grant = keys::find(pool, key).await?.ok_or(ApiError::Unauthorized)?;
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

    /// Forgets rate-limit state of idle keys; run periodically to bound memory.
    pub fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
        }
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
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let grant = state.keys.verify(&state.pool, key).await?;
        state.keys.check_rate(grant.key_id)?;
        Ok(Auth {
            tenant: grant.tenant_id,
            scopes: grant.scopes,
        })
    }
}
