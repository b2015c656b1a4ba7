//! Users, their devices and preferences, and topic subscriptions. Every query
//! is scoped by tenant: no statement here can touch another tenant's rows.

use sqlx::PgPool;

use crate::model::{
    preferences::Preferences,
    user::{EmailAddress, PhoneE164, Platform, Profile},
};

/// A stored user.
#[derive(Debug, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl UserRow {
    /// The profile part of the row. Values were validated on the way in.
    pub fn profile(&self) -> Profile {
        Profile {
            name: self.name.clone(),
            email: self.email.clone().and_then(|e| EmailAddress::parse(e).ok()),
            phone: self.phone.clone().and_then(|p| PhoneE164::parse(p).ok()),
            locale: self.locale.clone(),
            timezone: self.timezone.clone(),
        }
    }
}

/// Creates or replaces a user's profile; true if the user is new.
pub async fn put_user(
    pool: &PgPool,
    tenant: &str,
    user: &str,
    p: &Profile,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"INSERT INTO users (tenant_id, id, name, email, phone, locale, timezone)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (tenant_id, id) DO UPDATE SET name = $3, email = $4, phone = $5,
             locale = $6, timezone = $7, updated_at = now()
         RETURNING (xmax = 0) AS "created!""#,
        tenant,
        user,
        p.name,
        p.email.as_ref().map(EmailAddress::as_str),
        p.phone.as_ref().map(PhoneE164::as_str),
        p.locale,
        p.timezone,
    )
    .fetch_one(pool)
    .await
}

/// One user, if it exists in this tenant.
pub async fn get_user(
    pool: &PgPool,
    tenant: &str,
    user: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as!(
        UserRow,
        "SELECT id, name, email, phone, locale, timezone, created_at, updated_at
         FROM users WHERE tenant_id = $1 AND id = $2",
        tenant,
        user,
    )
    .fetch_optional(pool)
    .await
}

/// Erases a user: the user with their devices, preferences and
/// subscriptions (cascade), and in the same transaction their addresses
/// and content in stored deliveries (a held or pending delivery is
/// suppressed, reason `erased`: it will not be sent) and dead letters.
/// False if there was no such user.
pub async fn delete_user(pool: &PgPool, tenant: &str, user: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query!(
        "DELETE FROM users WHERE tenant_id = $1 AND id = $2",
        tenant,
        user,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n == 0 {
        return Ok(false);
    }
    // The erased destination stays unique per row (the fan-out key
    // includes it) and says what happened.
    sqlx::query!(
        "UPDATE deliveries
         SET destination = 'erased:' || id::text, rendered = NULL, last_error = NULL,
             status = CASE WHEN status IN ('pending', 'deferred') THEN 'suppressed' ELSE status END,
             reason = CASE WHEN status IN ('pending', 'deferred') THEN 'erased' ELSE reason END,
             updated_at = now()
         WHERE tenant_id = $1 AND user_id = $2",
        tenant,
        user,
    )
    .execute(&mut *tx)
    .await?;
    super::dead_letters::erase_user(&mut *tx, tenant, user).await?;
    tx.commit().await?;
    Ok(true)
}

/// Whether the user exists in this tenant.
pub async fn user_exists(pool: &PgPool, tenant: &str, user: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM users WHERE tenant_id = $1 AND id = $2) AS "exists!""#,
        tenant,
        user,
    )
    .fetch_one(pool)
    .await
}

/// Registers (or re-activates) a device; `None` if the user does not exist,
/// else whether the device is new.
pub async fn put_device(
    pool: &PgPool,
    tenant: &str,
    user: &str,
    token: &str,
    platform: Platform,
) -> Result<Option<bool>, sqlx::Error> {
    let result = sqlx::query_scalar!(
        r#"INSERT INTO devices (tenant_id, user_id, token, platform) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, user_id, token) DO UPDATE SET platform = $4, active = true,
             deactivated_reason = NULL, updated_at = now()
         RETURNING (xmax = 0) AS "created!""#,
        tenant,
        user,
        token,
        platform.as_str(),
    )
    .fetch_one(pool)
    .await;
    match result {
        Ok(created) => Ok(Some(created)),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a device; false if there was none.
pub async fn delete_device(
    pool: &PgPool,
    tenant: &str,
    user: &str,
    token: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "DELETE FROM devices WHERE tenant_id = $1 AND user_id = $2 AND token = $3",
        tenant,
        user,
        token,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// A registered device.
#[derive(Debug, sqlx::FromRow, serde::Serialize)]
pub struct DeviceRow {
    pub token: String,
    pub platform: String,
    pub active: bool,
    pub deactivated_reason: Option<String>,
}

/// A user's devices, active first.
pub async fn list_devices(
    pool: &PgPool,
    tenant: &str,
    user: &str,
) -> Result<Vec<DeviceRow>, sqlx::Error> {
    sqlx::query_as!(
        DeviceRow,
        "SELECT token, platform, active, deactivated_reason FROM devices
         WHERE tenant_id = $1 AND user_id = $2 ORDER BY active DESC, created_at",
        tenant,
        user,
    )
    .fetch_all(pool)
    .await
}

/// Replaces a user's preferences; false if the user does not exist.
pub async fn put_preferences(
    pool: &PgPool,
    tenant: &str,
    user: &str,
    prefs: &Preferences,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        "INSERT INTO preferences (tenant_id, user_id, preferences) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, user_id) DO UPDATE SET preferences = $3, updated_at = now()",
        tenant,
        user,
        sqlx::types::Json(prefs) as _,
    )
    .execute(pool)
    .await;
    match result {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(false),
        Err(e) => Err(e),
    }
}

/// A user's stored preferences (defaults if none stored); `None` if no such user.
pub async fn get_preferences(
    pool: &PgPool,
    tenant: &str,
    user: &str,
) -> Result<Option<Preferences>, sqlx::Error> {
    let row = sqlx::query_scalar!(
        r#"SELECT p.preferences AS "preferences?: sqlx::types::Json<Preferences>" FROM users u
           LEFT JOIN preferences p ON p.tenant_id = u.tenant_id AND p.user_id = u.id
           WHERE u.tenant_id = $1 AND u.id = $2"#,
        tenant,
        user,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|p| p.map(|j| j.0).unwrap_or_default()))
}

/// Subscribes a user to a topic; `None` if the user does not exist, else
/// whether the subscription is new.
pub async fn subscribe(
    pool: &PgPool,
    tenant: &str,
    topic: &str,
    user: &str,
) -> Result<Option<bool>, sqlx::Error> {
    let result = sqlx::query!(
        "INSERT INTO topic_subscriptions (tenant_id, topic, user_id) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        tenant,
        topic,
        user,
    )
    .execute(pool)
    .await;
    match result {
        Ok(r) => Ok(Some(r.rows_affected() == 1)),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Unsubscribes; false if there was no subscription.
pub async fn unsubscribe(
    pool: &PgPool,
    tenant: &str,
    topic: &str,
    user: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "DELETE FROM topic_subscriptions WHERE tenant_id = $1 AND topic = $2 AND user_id = $3",
        tenant,
        topic,
        user,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Number of subscribers of a topic.
pub async fn subscriber_count(
    pool: &PgPool,
    tenant: &str,
    topic: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM topic_subscriptions WHERE tenant_id = $1 AND topic = $2"#,
        tenant,
        topic,
    )
    .fetch_one(pool)
    .await
}
