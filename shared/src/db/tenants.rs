//! Tenants.

use sqlx::{PgPool, Postgres};

use crate::model::{Category, TenantId};

/// Creates a tenant if it does not exist; true if it was created.
pub async fn ensure(pool: &PgPool, id: &TenantId, name: &str) -> Result<bool, sqlx::Error> {
    let created = sqlx::query!(
        "INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        id.as_str(),
        name,
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(created == 1)
}

/// Whether a tenant exists.
pub async fn exists<'e>(
    db: impl sqlx::Executor<'e, Database = Postgres>,
    id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1) AS "exists!""#,
        id,
    )
    .fetch_one(db)
    .await
}

/// Sets the categories that ignore opt-outs; false if the tenant is unknown.
pub async fn set_required_categories(
    pool: &PgPool,
    id: &TenantId,
    categories: &[Category],
) -> Result<bool, sqlx::Error> {
    let names: Vec<&str> = categories.iter().map(Category::as_str).collect();
    let updated = sqlx::query!(
        "UPDATE tenants SET required_categories = $2 WHERE id = $1",
        id.as_str(),
        &names as &[&str],
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// A tenant as listed by `heraldctl tenants list`.
#[derive(Debug, sqlx::FromRow, serde::Serialize)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub required_categories: Vec<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Every tenant, by id.
pub async fn list(pool: &PgPool) -> Result<Vec<TenantRow>, sqlx::Error> {
    sqlx::query_as!(
        TenantRow,
        "SELECT id, name, required_categories, created_at FROM tenants ORDER BY id"
    )
    .fetch_all(pool)
    .await
}

/// Sets (or with `None` clears) a frequency cap; false if the tenant is unknown.
pub async fn set_cap(
    pool: &PgPool,
    id: &TenantId,
    category: &Category,
    channel: crate::model::Channel,
    cap: Option<crate::model::policy::FrequencyCap>,
) -> Result<bool, sqlx::Error> {
    let path = vec![category.as_str().to_owned(), channel.as_str().to_owned()];
    let updated = match cap {
        Some(cap) => {
            sqlx::query!(
                "UPDATE tenants SET frequency_caps = jsonb_set(
                 jsonb_set(frequency_caps, ARRAY[($2::text[])[1]],
                           COALESCE(frequency_caps -> ($2::text[])[1], '{}'::jsonb)),
                 $2, $3)
             WHERE id = $1",
                id.as_str(),
                &path,
                sqlx::types::Json(cap) as _,
            )
            .execute(pool)
            .await?
        }
        None => {
            sqlx::query!(
                "UPDATE tenants SET frequency_caps = frequency_caps #- $2 WHERE id = $1",
                id.as_str(),
                &path,
            )
            .execute(pool)
            .await?
        }
    };
    Ok(updated.rows_affected() == 1)
}
