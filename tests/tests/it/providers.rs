//! Provider clients against their fakes on loopback (and Twilio against its
//! published spec): the wire format each sends, and how each classifies
//! every kind of answer. No broker or database is involved.

mod apns;
mod config;
mod email_api;
mod fcm;
mod smtp;
mod twilio;

use std::time::Duration;

use herald::{
    model::{Lane, user::Platform},
    providers::{
        Destination, EmailMessage, ErrorClass, Outcome, PushMessage, Rendered, SendContext,
        SmsMessage,
    },
};
use uuid::Uuid;

/// Generous for loopback, so a slow CI machine does not fail a test.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Short, for tests against a peer that never answers.
pub const SHORT: Duration = Duration::from_millis(500);

pub fn ctx(lane: Lane) -> SendContext {
    SendContext {
        delivery_id: Uuid::new_v4(),
        created_at: chrono::Utc::now(),
        notification_id: Uuid::new_v4(),
        lane,
        expires_at: None,
    }
}

pub fn push(title: &str, body: &str) -> Rendered {
    Rendered::Push(PushMessage {
        title: Some(title.into()),
        body: Some(body.into()),
        data: [("order_id".to_owned(), "A-991".to_owned())].into(),
    })
}

pub fn email(subject: &str, text: Option<&str>, html: Option<&str>) -> Rendered {
    Rendered::Email(EmailMessage {
        subject: subject.into(),
        text: text.map(str::to_owned),
        html: html.map(str::to_owned),
    })
}

pub fn sms(text: &str) -> Rendered {
    Rendered::Sms(SmsMessage { text: text.into() })
}

pub fn device(token: &str, platform: Platform) -> Destination {
    Destination {
        address: token.into(),
        platform: Some(platform),
    }
}

pub fn address(address: &str) -> Destination {
    Destination {
        address: address.into(),
        platform: None,
    }
}

/// The provider id of a `Sent`, failing on anything else.
#[track_caller]
pub fn sent(outcome: Outcome) -> Option<String> {
    match outcome {
        Outcome::Sent { provider_id } => provider_id,
        other => panic!("expected Sent, got {other:?}"),
    }
}

/// The `after` of a `Retry` of `class`, failing on anything else.
#[track_caller]
pub fn retry(outcome: Outcome, want: ErrorClass) -> Option<Duration> {
    match outcome {
        Outcome::Retry { class, after, .. } if class == want => after,
        other => panic!("expected Retry({want}), got {other:?}"),
    }
}

/// Whether a `Permanent` of `class` asks to deactivate, failing on anything else.
#[track_caller]
pub fn permanent(outcome: Outcome, want: ErrorClass) -> bool {
    match outcome {
        Outcome::Permanent {
            class, deactivate, ..
        } if class == want => deactivate,
        other => panic!("expected Permanent({want}), got {other:?}"),
    }
}
