//! The provider token: an ES256 JWT signed with the team's `.p8` key, reused
//! for most of its hour of validity because Apple throttles new ones.

use std::{
    fmt,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::providers::{ErrorClass, Outcome};

/// How long one provider JWT is reused. Apple accepts a token for an hour and
/// refuses new ones more often than every 20 minutes
/// (`TooManyProviderTokenUpdates`), so 50 minutes is safely inside both.
const TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);

/// The youngest token Apple lets us replace.
const MIN_TOKEN_AGE: Duration = Duration::from_secs(20 * 60);

/// A team's APNs signing key (`AuthKey_<KEYID>.p8`), its id and the team.
pub struct ApnsKey {
    /// The 10-character key id (`APNS_KEY_ID`), the JWT's `kid`.
    pub key_id: String,
    /// The 10-character team id (`APNS_TEAM_ID`), the JWT's `iss`.
    pub team_id: String,
    key: EncodingKey,
}

impl ApnsKey {
    /// Reads a `.p8` key file.
    pub fn from_file(path: &Path, key_id: &str, team_id: &str) -> anyhow::Result<Self> {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading APNs key file {}", path.display()))?;
        Self::from_pem(&pem, key_id, team_id)
            .with_context(|| format!("APNs key file {}", path.display()))
    }

    /// Parses a PKCS#8 P-256 key in PEM form, as Apple issues them.
    pub fn from_pem(pem: &[u8], key_id: &str, team_id: &str) -> anyhow::Result<Self> {
        let key = EncodingKey::from_ec_pem(pem)
            .context("not a P-256 private key in PEM (PKCS#8) form")?;
        Ok(Self {
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            key,
        })
    }

    fn sign(&self) -> anyhow::Result<String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            iat: u64,
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: &self.team_id,
            iat: jsonwebtoken::get_current_timestamp(),
        };
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

impl fmt::Debug for ApnsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsKey")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

/// The current provider JWT, shared by every send.
pub(super) struct TokenCache {
    key: ApnsKey,
    // A plain mutex: signing takes microseconds and never awaits.
    cached: Mutex<Option<(String, Instant)>>,
}

impl TokenCache {
    pub(super) fn new(key: ApnsKey) -> Self {
        Self {
            key,
            cached: Mutex::new(None),
        }
    }

    /// The provider JWT, reused for [`TOKEN_REUSE`].
    pub(super) fn jwt(&self) -> Result<String, Outcome> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((jwt, issued)) = cached.as_ref()
            && issued.elapsed() < TOKEN_REUSE
        {
            return Ok(jwt.clone());
        }
        let jwt = self.key.sign().map_err(|err| Outcome::Permanent {
            class: ErrorClass::Config,
            reason: format!("apns: signing the provider token: {err}"),
            deactivate: false,
        })?;
        *cached = Some((jwt.clone(), Instant::now()));
        Ok(jwt)
    }

    /// Forgets `stale` after Apple called it expired, if Apple will accept a
    /// replacement yet. Answers whether a new token is worth a try.
    pub(super) fn expire(&self, stale: &str) -> bool {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        match cached.as_ref() {
            Some((jwt, issued)) if jwt == stale => {
                if issued.elapsed() < MIN_TOKEN_AGE {
                    return false;
                }
                *cached = None;
                true
            }
            // Another send already replaced it.
            _ => true,
        }
    }
}
