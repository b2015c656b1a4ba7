//! What the router reads and writes besides deliveries: recipients with
//! their preferences and devices, topic pages, the tenant's policy,
//! frequency-cap events and notification status.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, types::Json};
use uuid::Uuid;

use crate::model::preferences::Preferences;

/// A recipient row: profile, preferences, active devices and whether their
/// addresses are suppressed, in one read. The suppression list is probed by
/// its primary key in the same statement, so checking it costs the router no
/// round trip (and next to nothing while a tenant's list is empty).
#[derive(Debug, sqlx::FromRow)]
pub struct RecipientRow {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub preferences: Option<Json<Preferences>>,
    /// `[[token, platform], ...]` of active devices.
    pub devices: Json<Vec<(String, String)>>,
    /// The email address is on the tenant's suppression list.
    pub email_suppressed: bool,
    /// The phone number is on the tenant's suppression list.
    pub phone_suppressed: bool,
}

/// A checked `query_as!` into `$row` of `SELECT $head` followed by the
/// [`RecipientRow`] columns of user `u` and preferences `p`, then `$tail`:
/// one column list for every query that reads recipients. (`query_as!` takes
/// string literals only, so the list cannot be a `const`.)
macro_rules! select_recipients {
    ($row:ident, $head:tt, $tail:tt $($args:tt)*) => {
        sqlx::query_as!(
            $row,
            $head
                + r#"u.id AS "id!", u.name, u.email, u.phone, u.locale, u.timezone,
    p.preferences AS "preferences?: Json<Preferences>",
    COALESCE((SELECT json_agg(json_build_array(d.token, d.platform) ORDER BY d.token) FROM devices d
              WHERE d.tenant_id = u.tenant_id AND d.user_id = u.id AND d.active), '[]'::json)
        AS "devices!: Json<Vec<(String, String)>>",
    EXISTS (SELECT 1 FROM suppressions s WHERE s.tenant_id = u.tenant_id AND s.channel = 'email'
            AND s.address = lower(u.email)) AS "email_suppressed!",
    EXISTS (SELECT 1 FROM suppressions s WHERE s.tenant_id = u.tenant_id AND s.channel = 'sms'
            AND s.address = u.phone) AS "phone_suppressed!" "#
                + $tail
            $($args)*
        )
    };
}

/// The named users of a tenant (missing ones are simply absent).
pub async fn recipients(
    pool: &PgPool,
    tenant: &str,
    users: &[&str],
) -> Result<Vec<RecipientRow>, sqlx::Error> {
    select_recipients!(
        RecipientRow,
        "SELECT ",
        "FROM users u
         LEFT JOIN preferences p ON p.tenant_id = u.tenant_id AND p.user_id = u.id
         WHERE u.tenant_id = $1 AND u.id = ANY($2)",
        tenant,
        users as &[&str],
    )
    .fetch_all(pool)
    .await
}

/// Subscribers of a topic with ids in `(after, last]`, in id order. (User
/// ids are never empty, so `''` stands for "from the start" and the bound
/// stays a plain index range.)
pub async fn topic_page(
    pool: &PgPool,
    tenant: &str,
    topic: &str,
    after: Option<&str>,
    last: &str,
) -> Result<Vec<RecipientRow>, sqlx::Error> {
    select_recipients!(
        RecipientRow,
        "SELECT ",
        "FROM topic_subscriptions s
         JOIN users u ON u.tenant_id = s.tenant_id AND u.id = s.user_id
         LEFT JOIN preferences p ON p.tenant_id = u.tenant_id AND p.user_id = u.id
         WHERE s.tenant_id = $1 AND s.topic = $2 AND s.user_id > COALESCE($3, '') AND s.user_id <= $4
         ORDER BY s.user_id",
        tenant,
        topic,
        after,
        last,
    )
    .fetch_all(pool)
    .await
}

/// The last subscriber id of the next page of `size` after `after`: an
/// index-only skip, so enumerating a million subscribers reads no rows into
/// memory. `None` when no subscriber is left.
pub async fn next_page_end(
    pool: &PgPool,
    tenant: &str,
    topic: &str,
    after: Option<&str>,
    size: i64,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT COALESCE(
             (SELECT user_id FROM topic_subscriptions
              WHERE tenant_id = $1 AND topic = $2 AND user_id > COALESCE($3, '')
              ORDER BY user_id OFFSET $4::bigint - 1 LIMIT 1),
             (SELECT max(user_id) FROM topic_subscriptions
              WHERE tenant_id = $1 AND topic = $2 AND user_id > COALESCE($3, '')))",
        tenant,
        topic,
        after,
        size,
    )
    .fetch_one(pool)
    .await
}

/// A tenant's routing policy as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct PolicyRow {
    pub required_categories: Vec<String>,
    pub frequency_caps: serde_json::Value,
}

/// The routing policy of a tenant.
pub async fn policy(pool: &PgPool, tenant: &str) -> Result<Option<PolicyRow>, sqlx::Error> {
    sqlx::query_as!(
        PolicyRow,
        "SELECT required_categories, frequency_caps FROM tenants WHERE id = $1",
        tenant,
    )
    .fetch_optional(pool)
    .await
}

/// Records cap events for `users` (idempotent per notification) and answers,
/// per user, how many capped deliveries of this category and channel they
/// had in `per` up to and including this notification.
#[allow(clippy::too_many_arguments)]
pub async fn cap_ranks(
    conn: &mut sqlx::PgConnection,
    tenant: &str,
    category: &str,
    channel: &str,
    notification_id: Uuid,
    at: DateTime<Utc>,
    per: Duration,
    users: &[&str],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query!(
        "INSERT INTO frequency_events (tenant_id, user_id, category, channel, notification_id, at)
         SELECT $1, u, $3, $4, $5, $6 FROM UNNEST($2::text[]) AS u ON CONFLICT DO NOTHING",
        tenant,
        users as &[&str],
        category,
        channel,
        notification_id,
        at,
    )
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query!(
        r#"SELECT u.user_id AS "user_id!", (SELECT count(*) FROM frequency_events e
             WHERE e.tenant_id = $1 AND e.user_id = u.user_id AND e.category = $3 AND e.channel = $4
               AND e.at > $6::timestamptz - make_interval(secs => $7) AND (e.at, e.notification_id) <= ($6, $5))
               AS "count!"
         FROM UNNEST($2::text[]) AS u(user_id)"#,
        tenant,
        users as &[&str],
        category,
        channel,
        notification_id,
        at,
        per.as_secs_f64(),
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.user_id, r.count)).collect())
}

/// Moves a notification from `accepted` to `routing`.
pub async fn start_routing(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE notifications SET status = 'routing', updated_at = now() WHERE id = $1 AND status = 'accepted'",
        id,
    )
    .execute(pool)
        .await
        .map(|_| ())
}

/// Marks a notification routed.
pub async fn finish_routing(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE notifications SET status = 'routed', routed_at = now(), updated_at = now()
         WHERE id = $1 AND status IN ('accepted', 'routing')",
        id,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Records that pages were handed to the router's queue and moves the
/// topic checkpoint past the last of them, in one transaction.
pub async fn pages_handed_out(pool: &PgPool, id: Uuid, lasts: &[&str]) -> Result<(), sqlx::Error> {
    let Some(cursor) = lasts.last() else {
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO route_pages (notification_id, last_user) SELECT $1, l FROM UNNEST($2::text[]) AS l
         ON CONFLICT DO NOTHING",
        id,
        lasts as &[&str],
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE notifications SET route_cursor = $2, updated_at = now() WHERE id = $1",
        id,
        *cursor,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Records that every page was handed out.
pub async fn pages_enumerated(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE notifications SET pages_total = (SELECT count(*) FROM route_pages WHERE notification_id = $1)
         WHERE id = $1",
        id,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Marks a page done; the notification is routed when all pages are.
pub async fn page_done(pool: &PgPool, id: Uuid, last_user: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "INSERT INTO route_pages (notification_id, last_user, done_at) VALUES ($1, $2, now())
         ON CONFLICT (notification_id, last_user) DO UPDATE SET done_at = COALESCE(route_pages.done_at, now())",
        id,
        last_user,
    )
    .execute(pool)
    .await?;
    complete_if_all_pages_done(pool, id).await
}

/// Marks a topic notification routed once its page count is known and every
/// page is done. Safe to call from every page and the enumerator alike.
pub async fn complete_if_all_pages_done(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE notifications SET status = 'routed', routed_at = now(), updated_at = now()
         WHERE id = $1 AND status IN ('accepted', 'routing') AND pages_total IS NOT NULL
           AND pages_total <= (SELECT count(*) FROM route_pages WHERE notification_id = $1 AND done_at IS NOT NULL)",
        id,
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Loads a notification whatever its tenant (the router trusts its queue).
pub async fn notification(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<super::notifications::NotificationRow>, sqlx::Error> {
    sqlx::query_as!(
        super::notifications::NotificationRow,
        "SELECT id, tenant_id, category, priority, status, request, created_at, updated_at, routed_at, route_cursor
         FROM notifications WHERE id = $1",
        id,
    )
    .fetch_optional(pool)
    .await
}

/// Notifications by id, whatever their tenant (the router trusts its
/// queue): one read for a batch of routing messages.
pub async fn notifications(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<Vec<super::notifications::NotificationRow>, sqlx::Error> {
    sqlx::query_as!(
        super::notifications::NotificationRow,
        "SELECT id, tenant_id, category, priority, status, request, created_at, updated_at, routed_at, route_cursor
         FROM notifications WHERE id = ANY($1)",
        ids,
    )
    .fetch_all(pool)
    .await
}

/// A recipient row and its tenant.
#[derive(Debug, sqlx::FromRow)]
pub struct TenantRecipientRow {
    pub tenant_id: String,
    #[sqlx(flatten)]
    pub recipient: RecipientRow,
}

/// The named users of several tenants in one read: `pairs` of (tenant,
/// user); missing ones are simply absent.
pub async fn recipients_of<'e>(
    db: impl sqlx::PgExecutor<'e>,
    pairs: &[(&str, &str)],
) -> Result<Vec<TenantRecipientRow>, sqlx::Error> {
    let tenants: Vec<&str> = pairs.iter().map(|p| p.0).collect();
    let users: Vec<&str> = pairs.iter().map(|p| p.1).collect();
    // The recipient's columns with its tenant's in front, as one flat row.
    struct Flat {
        tenant_id: String,
        id: String,
        name: Option<String>,
        email: Option<String>,
        phone: Option<String>,
        locale: Option<String>,
        timezone: Option<String>,
        preferences: Option<Json<Preferences>>,
        devices: Json<Vec<(String, String)>>,
        email_suppressed: bool,
        phone_suppressed: bool,
    }
    let rows = select_recipients!(
        Flat,
        "SELECT u.tenant_id, ",
        "FROM users u
         LEFT JOIN preferences p ON p.tenant_id = u.tenant_id AND p.user_id = u.id
         WHERE (u.tenant_id, u.id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
        &tenants as &[&str],
        &users as &[&str],
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| TenantRecipientRow {
            tenant_id: r.tenant_id,
            recipient: RecipientRow {
                id: r.id,
                name: r.name,
                email: r.email,
                phone: r.phone,
                locale: r.locale,
                timezone: r.timezone,
                preferences: r.preferences,
                devices: r.devices,
                email_suppressed: r.email_suppressed,
                phone_suppressed: r.phone_suppressed,
            },
        })
        .collect())
}

/// Marks notifications routed (a batch of user-list notifications).
pub async fn finish_routing_many(pool: &PgPool, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE notifications SET status = 'routed', routed_at = now(), updated_at = now()
         WHERE id = ANY($1) AND status IN ('accepted', 'routing')",
        ids,
    )
    .execute(pool)
    .await
    .map(|_| ())
}
