//! The notification request of API v1, as sent over HTTP or to `herald.ingest`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    Category, Channel, FieldError, FieldErrors, Lane, TopicName, UserId, find_nul, template,
};

/// Largest notification request, as an HTTP body or a `herald.ingest`
/// message (PRODUCT.md: 1 MiB).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Most recipients one request may name; larger audiences use a topic.
pub const MAX_USERS: usize = 1000;
/// Most notifications in one batch request.
pub const MAX_BATCH: usize = 500;
/// Push payloads are capped at 4 KiB by both FCM and APNs.
const MAX_PUSH_BYTES: usize = 4096;
/// Twilio concatenates at most 10 segments; 1600 characters is its documented cap.
const MAX_SMS_CHARS: usize = 1600;
/// RFC 5322 line limit, which a subject must fit in.
const MAX_SUBJECT_CHARS: usize = 998;
const MAX_EMAIL_BODY_BYTES: usize = 256 * 1024;
const MAX_DATA_BYTES: usize = 64 * 1024;
/// How far ahead `send_at` may defer; further than that is almost surely a bug.
const MAX_DEFER_DAYS: i64 = 365;

/// Who a notification goes to: a list of users or a topic's subscribers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Recipients {
    /// An explicit list of 1 to 1000 user ids.
    Users(Vec<UserId>),
    /// Every subscriber of a topic.
    Topic(TopicName),
}

/// Push content. Strings may hold `{{var}}` placeholders.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Key/value data delivered to the app; FCM requires string values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// Email content. At least one of `text` and `html`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailContent {
    /// One line, required: optional here only so that validation can name
    /// it when it is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = true, max_length = 998)]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

/// SMS content.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SmsContent {
    /// Required; optional here only so that validation can name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = true, max_length = 1600)]
    pub text: Option<String>,
}

/// Content per channel; a channel without content is never delivered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<SmsContent>,
}

impl Content {
    /// Whether this content covers a channel.
    pub fn covers(&self, channel: Channel) -> bool {
        match channel {
            Channel::Push => self.push.is_some(),
            Channel::Email => self.email.is_some(),
            Channel::Sms => self.sms.is_some(),
        }
    }
}

/// The request exactly as a client may send it; every field optional so
/// that validation can name each missing one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    category: Option<String>,
    to: Option<RawTo>,
    priority: Option<String>,
    channels: Option<Vec<String>>,
    content: Option<Content>,
    data: Option<Value>,
    send_at: Option<String>,
    expires_at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTo {
    users: Option<Vec<String>>,
    topic: Option<String>,
}

/// A validated notification request. It is what ingest stores and the router
/// reads, and its schema is the body of `POST /v1/notifications` (where
/// `priority` and `data` may be left out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotificationRequest {
    pub category: Category,
    pub to: Recipients,
    /// `normal` when left out.
    #[schema(required = false)]
    pub priority: Lane,
    /// Channels the caller restricted delivery to; `None` means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1)]
    pub channels: Option<Vec<Channel>>,
    pub content: Content,
    /// Template variables; always a JSON object (`{}` when left out).
    #[schema(value_type = Object, required = false)]
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl NotificationRequest {
    /// Parses a JSON value into a request, collecting every invalid field.
    /// `now` anchors the checks on `send_at` and `expires_at`.
    pub fn parse(value: Value, now: DateTime<Utc>) -> Result<Self, Vec<FieldError>> {
        if let Some(field) = find_nul(&value) {
            return Err(vec![FieldError {
                field,
                message: "must not contain the NUL character (U+0000)".into(),
            }]);
        }
        let raw: RawRequest = serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            vec![FieldError {
                field: if path == "." { String::new() } else { path },
                message: err.into_inner().to_string(),
            }]
        })?;
        let mut errors = FieldErrors::default();

        let category = match raw.category {
            Some(c) => errors.check("category", Category::parse(c)),
            None => {
                errors.push("category", "is required");
                None
            }
        };
        let to = parse_to(raw.to, &mut errors);
        let priority = match raw.priority.as_deref() {
            None => Some(Lane::Normal),
            Some(p) => errors.check("priority", p.parse::<Lane>()),
        };
        let channels = raw
            .channels
            .and_then(|list| parse_channels(list, &mut errors));
        let content = raw.content.unwrap_or_default();
        check_content(&content, &mut errors);
        if let Some(channels) = &channels {
            if !channels.iter().any(|c| content.covers(*c)) {
                errors.push(
                    "content",
                    "covers none of the requested channels; add content for at least one",
                );
            }
        } else if Channel::ALL.iter().all(|c| !content.covers(*c)) {
            errors.push(
                "content",
                "needs content for at least one of push, email, sms",
            );
        }
        let data = raw
            .data
            .unwrap_or_else(|| Value::Object(Default::default()));
        if !data.is_object() {
            errors.push("data", "must be a JSON object");
        } else if data.to_string().len() > MAX_DATA_BYTES {
            errors.push("data", format!("must be at most {MAX_DATA_BYTES} bytes"));
        }
        let send_at = raw
            .send_at
            .and_then(|s| errors.check("send_at", parse_time(&s)));
        let expires_at = raw
            .expires_at
            .and_then(|s| errors.check("expires_at", parse_time(&s)));
        if let Some(at) = send_at
            && at > now + Duration::days(MAX_DEFER_DAYS)
        {
            errors.push("send_at", format!("must be within {MAX_DEFER_DAYS} days"));
        }
        if let Some(exp) = expires_at {
            if exp <= now {
                errors.push("expires_at", "is in the past");
            } else if send_at.is_some_and(|at| exp <= at) {
                errors.push("expires_at", "must be after send_at");
            }
        }

        match (category, to, priority) {
            (Some(category), Some(to), Some(priority)) if errors.is_empty() => Ok(Self {
                category,
                to,
                priority,
                channels,
                content,
                data,
                send_at,
                expires_at,
            }),
            _ => Err(errors.into_vec()),
        }
    }

    /// Channels this request may deliver on: the restriction, else every
    /// channel, always limited to those it has content for.
    pub fn wanted_channels(&self) -> impl Iterator<Item = Channel> + '_ {
        Channel::ALL.into_iter().filter(|c| {
            self.content.covers(*c) && self.channels.as_ref().is_none_or(|list| list.contains(c))
        })
    }
}

fn parse_to(to: Option<RawTo>, errors: &mut FieldErrors) -> Option<Recipients> {
    match to {
        None => {
            errors.push("to", "is required: give `users` or `topic`");
            None
        }
        Some(RawTo {
            users: Some(_),
            topic: Some(_),
        }) => {
            errors.push("to", "give either `users` or `topic`, not both");
            None
        }
        Some(RawTo {
            users: None,
            topic: None,
        }) => {
            errors.push("to", "give `users` or `topic`");
            None
        }
        Some(RawTo {
            topic: Some(topic), ..
        }) => errors
            .check("to.topic", TopicName::parse(topic))
            .map(Recipients::Topic),
        Some(RawTo {
            users: Some(users), ..
        }) => {
            if users.is_empty() || users.len() > MAX_USERS {
                errors.push(
                    "to.users",
                    format!("must list 1 to {MAX_USERS} users; use a topic for more"),
                );
                return None;
            }
            let mut seen = BTreeSet::new();
            let mut parsed = Vec::with_capacity(users.len());
            for (i, user) in users.into_iter().enumerate() {
                if let Some(user) = errors.check(format!("to.users[{i}]"), UserId::parse(user)) {
                    // A user named twice gets one notification, not two.
                    if seen.insert(user.clone()) {
                        parsed.push(user);
                    }
                }
            }
            Some(Recipients::Users(parsed))
        }
    }
}

fn parse_channels(list: Vec<String>, errors: &mut FieldErrors) -> Option<Vec<Channel>> {
    if list.is_empty() {
        errors.push(
            "channels",
            "must not be empty; omit it to allow every channel",
        );
        return None;
    }
    let mut out = Vec::new();
    for (i, name) in list.iter().enumerate() {
        if let Some(channel) = errors.check(format!("channels[{i}]"), name.parse::<Channel>())
            && !out.contains(&channel)
        {
            out.push(channel);
        }
    }
    Some(out)
}

fn check_text(errors: &mut FieldErrors, field: &str, text: &str) {
    if let Err(err) = template::check(text) {
        errors.push(field, err.to_string());
    }
}

fn check_content(content: &Content, errors: &mut FieldErrors) {
    if let Some(push) = &content.push {
        if push.title.is_none() && push.body.is_none() {
            errors.push("content.push", "needs a title or a body");
        }
        let size = serde_json::to_string(push).map_or(0, |s| s.len());
        if size > MAX_PUSH_BYTES {
            errors.push(
                "content.push",
                format!("must be at most {MAX_PUSH_BYTES} bytes (FCM and APNs limit)"),
            );
        }
        for (name, text) in [("title", &push.title), ("body", &push.body)] {
            if let Some(text) = text {
                check_text(errors, &format!("content.push.{name}"), text);
            }
        }
        for (key, value) in &push.data {
            check_text(errors, &format!("content.push.data.{key}"), value);
        }
    }
    if let Some(email) = &content.email {
        match &email.subject {
            None => errors.push("content.email.subject", "is required"),
            Some(s) if s.chars().count() > MAX_SUBJECT_CHARS => errors.push(
                "content.email.subject",
                format!("must be at most {MAX_SUBJECT_CHARS} characters"),
            ),
            Some(s) if s.contains(['\r', '\n']) => {
                errors.push("content.email.subject", "must be a single line")
            }
            Some(s) => check_text(errors, "content.email.subject", s),
        }
        if email.text.is_none() && email.html.is_none() {
            errors.push("content.email", "needs `text` or `html`");
        }
        for (name, body) in [("text", &email.text), ("html", &email.html)] {
            if let Some(body) = body {
                let field = format!("content.email.{name}");
                if body.len() > MAX_EMAIL_BODY_BYTES {
                    errors.push(
                        &field,
                        format!("must be at most {MAX_EMAIL_BODY_BYTES} bytes"),
                    );
                } else {
                    check_text(errors, &field, body);
                }
            }
        }
    }
    if let Some(sms) = &content.sms {
        match &sms.text {
            None => errors.push("content.sms.text", "is required"),
            Some(t) if t.chars().count() > MAX_SMS_CHARS => errors.push(
                "content.sms.text",
                format!("must be at most {MAX_SMS_CHARS} characters"),
            ),
            Some(t) => check_text(errors, "content.sms.text", t),
        }
    }
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| "must be an RFC 3339 timestamp such as 2026-11-22T18:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-11-22T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn parses_the_product_example() {
        let req = NotificationRequest::parse(
            json!({
                "category": "order.shipped",
                "to": {"users": ["u-123", "u-456", "u-123"]},
                "priority": "normal",
                "channels": ["push", "email"],
                "content": {
                    "push": {"title": "Shipped", "body": "Order {{order_id}}", "data": {"order_id": "{{order_id}}"}},
                    "email": {"subject": "Your order shipped", "text": "Hi {{name}}", "html": "<p>Hi</p>"},
                    "sms": {"text": "Order {{order_id}} shipped"}
                },
                "data": {"order_id": "A-991"},
                "send_at": "2026-11-22T18:00:00Z",
                "expires_at": "2026-11-22T20:00:00Z"
            }),
            now(),
        )
        .unwrap();
        assert_eq!(
            req.to,
            Recipients::Users(vec![
                UserId::parse("u-123").unwrap(),
                UserId::parse("u-456").unwrap()
            ])
        );
        assert_eq!(
            req.wanted_channels().collect::<Vec<_>>(),
            vec![Channel::Push, Channel::Email]
        );
    }

    #[test]
    fn reports_every_invalid_field_with_its_path() {
        let errors = NotificationRequest::parse(
            json!({
                "to": {"users": ["ok", "bad user"]},
                "priority": "urgent",
                "channels": ["fax"],
                "content": {"email": {"text": "x"}, "sms": {"text": "{{oops"}},
                "expires_at": "2020-01-01T00:00:00Z"
            }),
            now(),
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        for expected in [
            "category",
            "to.users[1]",
            "priority",
            "channels[0]",
            "content.email.subject",
            "content.sms.text",
            "expires_at",
        ] {
            assert!(
                fields.contains(&expected),
                "{expected} missing in {fields:?}"
            );
        }
    }

    #[test]
    fn nul_anywhere_is_refused_before_it_reaches_the_database() {
        let errors = NotificationRequest::parse(
            json!({"category": "x", "to": {"users": ["u"]},
                   "content": {"sms": {"text": "t"}}, "data": {"note": "a\u{0}b"}}),
            now(),
        )
        .unwrap_err();
        assert_eq!(errors[0].field, "data.note");
    }

    #[test]
    fn type_errors_carry_their_path() {
        let errors =
            NotificationRequest::parse(json!({"category": "x", "to": {"users": [1]}}), now())
                .unwrap_err();
        assert_eq!(errors[0].field, "to.users[0]");
        let errors = NotificationRequest::parse(json!({"category": "x", "colour": "red"}), now())
            .unwrap_err();
        assert!(errors[0].message.contains("colour"));
    }
}
