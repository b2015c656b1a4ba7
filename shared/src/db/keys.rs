//! API keys: generated here, stored hashed, looked up by hash.

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::model::TenantId;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send notifications and read their status.
    Send,
    /// Manage recipients, devices, preferences and topics.
    Manage,
}

impl Scope {
    /// Lower-case name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Manage => "manage",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "send" => Ok(Scope::Send),
            "manage" => Ok(Scope::Manage),
            other => Err(format!("unknown scope `{other}`; expected send or manage")),
        }
    }
}

/// Every key starts with this, so secret scanners and people recognise it.
const KEY_PREFIX: &str = "hk_";

/// SHA-256 of a presented key.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates a key for a tenant and returns it in clear: the only time it is
/// ever seen, since only its hash is stored.
pub async fn create(
    pool: &PgPool,
    tenant: &TenantId,
    scopes: &[Scope],
) -> Result<String, sqlx::Error> {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    sqlx::query!(
        "INSERT INTO api_keys (id, tenant_id, key_hash, key_prefix, scopes) VALUES ($1, $2, $3, $4, $5)",
        Uuid::now_v7(),
        tenant.as_str(),
        hash(&key),
        &key[..KEY_PREFIX.len() + 8],
        &scopes as &[&str],
    )
    .execute(pool)
    .await?;
    Ok(key)
}

/// The owner and rights of a valid key.
#[derive(Debug, Clone)]
pub struct KeyGrant {
    pub key_id: Uuid,
    pub tenant_id: String,
    pub scopes: Vec<Scope>,
}

/// Looks a presented key up; `None` if unknown or revoked.
pub async fn find(pool: &PgPool, key: &str) -> Result<Option<KeyGrant>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT id, tenant_id, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        hash(key),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| KeyGrant {
        key_id: r.id,
        tenant_id: r.tenant_id,
        scopes: r.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
    }))
}

/// A key as listed (never the key itself).
#[derive(Debug, sqlx::FromRow, serde::Serialize)]
pub struct KeyRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub key_prefix: String,
    pub scopes: Vec<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Keys of one tenant, or of all.
pub async fn list(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<KeyRow>, sqlx::Error> {
    sqlx::query_as!(
        KeyRow,
        "SELECT id, tenant_id, key_prefix, scopes, created_at, revoked_at FROM api_keys
         WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY created_at",
        tenant,
    )
    .fetch_all(pool)
    .await
}

/// Revokes a key by id; false if there was no such live key.
pub async fn revoke(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
        id,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}
