//! SendGrid's Event Webhook: a JSON array of events, signed with SendGrid's
//! ECDSA key (P-256, SHA-256) over the `X-Twilio-Email-Event-Webhook-Timestamp`
//! header's value followed by the raw body; the signature, DER-encoded, is
//! base64 in `X-Twilio-Email-Event-Webhook-Signature`. The verification key
//! is the one SendGrid shows when signing is enabled (base64 of its DER
//! SubjectPublicKeyInfo).
//!
//! Herald's email path sets two custom args on every message, which SendGrid
//! copies into each of its events: `herald_delivery_id` and
//! `herald_created_at` (the notification's acceptance time in µs, the
//! deliveries' partition key).

use base64::{Engine as _, engine::general_purpose::STANDARD};
use p256::{
    ecdsa::{Signature, VerifyingKey, signature::Verifier},
    pkcs8::DecodePublicKey,
};
use serde::Deserialize;

use super::{DeliveryRef, Receipt, ReceiptStatus, Refused, twilio::delivery_of};
use crate::model::suppression::SuppressionReason;

/// The provider's name in receipts and metrics.
pub const PROVIDER: &str = "sendgrid";
/// The signature header.
pub const SIGNATURE: &str = "x-twilio-email-event-webhook-signature";
/// The timestamp header, signed with the body.
pub const TIMESTAMP: &str = "x-twilio-email-event-webhook-timestamp";
/// Custom arg naming the delivery.
pub const DELIVERY_ARG: &str = "herald_delivery_id";
/// Custom arg carrying the delivery's partition key (µs since the epoch).
pub const CREATED_ARG: &str = "herald_created_at";

/// SendGrid's verification key.
#[derive(Debug, Clone)]
pub struct EventKey(VerifyingKey);

impl EventKey {
    /// Parses the key as SendGrid shows it: base64 of the DER public key
    /// (a PEM's body, with or without its armour lines).
    pub fn parse(text: &str) -> Result<Self, String> {
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = STANDARD
            .decode(body)
            .map_err(|e| format!("is not base64: {e}"))?;
        VerifyingKey::from_public_key_der(&der)
            .map(Self)
            .map_err(|e| format!("is not a P-256 public key in DER: {e}"))
    }

    /// Checks a callback: `signature` and `timestamp` are the headers'
    /// values, `body` the raw body.
    pub fn verify(
        &self,
        signature: Option<&str>,
        timestamp: Option<&str>,
        body: &[u8],
    ) -> Result<(), Refused> {
        let (Some(signature), Some(timestamp)) = (
            signature.filter(|s| !s.is_empty()),
            timestamp.filter(|s| !s.is_empty()),
        ) else {
            return Err(Refused::Unsigned("X-Twilio-Email-Event-Webhook-Signature"));
        };
        let der = STANDARD
            .decode(signature.trim())
            .map_err(|_| Refused::BadSignature)?;
        let signature = Signature::from_der(&der).map_err(|_| Refused::BadSignature)?;
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        self.0
            .verify(&signed, &signature)
            .map_err(|_| Refused::BadSignature)
    }
}

/// One event of the webhook's array (the fields Herald reads).
#[derive(Debug, Deserialize)]
struct Event {
    event: String,
    sg_event_id: String,
    /// For `bounce`: `bounce` (permanent) or `blocked` (refused for now).
    #[serde(rename = "type")]
    kind: Option<String>,
    reason: Option<String>,
    status: Option<String>,
    herald_delivery_id: Option<String>,
    herald_created_at: Option<String>,
}

fn delivery(e: &Event) -> Option<DeliveryRef> {
    delivery_of(
        e.herald_created_at.as_deref()?,
        e.herald_delivery_id.as_deref()?,
    )
}

/// Reads a verified webhook body into receipts, one per event.
pub fn receipts(body: &[u8]) -> Result<Vec<Receipt>, Refused> {
    let events: Vec<Event> = serde_json::from_slice(body)
        .map_err(|e| Refused::Malformed(format!("not SendGrid's array of events: {e}")))?;
    Ok(events.into_iter().map(receipt).collect())
}

fn receipt(e: Event) -> Receipt {
    let said = || {
        let text = [e.status.as_deref(), e.reason.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        let text: String = text.chars().take(500).collect();
        format!("sendgrid {}: {text}", e.event)
            .trim_end_matches([' ', ':'])
            .to_owned()
    };
    let (status, suppress, reason) = match (e.event.as_str(), e.kind.as_deref()) {
        ("delivered", _) => (Some(ReceiptStatus::Delivered), None, None),
        ("bounce", Some("blocked")) => (Some(ReceiptStatus::Undelivered), None, Some(said())),
        ("bounce", _) => (
            Some(ReceiptStatus::Bounced),
            Some(SuppressionReason::HardBounce),
            Some(said()),
        ),
        ("dropped", _) => (Some(ReceiptStatus::Undelivered), None, Some(said())),
        ("spamreport", _) => (
            Some(ReceiptStatus::Complained),
            Some(SuppressionReason::Complaint),
            Some(said()),
        ),
        ("unsubscribe" | "group_unsubscribe", _) => {
            (None, Some(SuppressionReason::Unsubscribed), Some(said()))
        }
        _ => (None, None, None),
    };
    Receipt {
        provider: PROVIDER,
        delivery: delivery(&e),
        event_id: e.sg_event_id,
        event: e.event,
        status,
        reason,
        suppress,
    }
}

#[cfg(test)]
mod tests {
    use p256::{
        ecdsa::{SigningKey, signature::Signer},
        pkcs8::EncodePublicKey,
    };

    use super::*;

    fn key() -> (SigningKey, EventKey) {
        let signing = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let der = signing.verifying_key().to_public_key_der().unwrap();
        let public = EventKey::parse(&STANDARD.encode(der.as_bytes())).unwrap();
        (signing, public)
    }

    #[test]
    fn verifies_timestamp_and_body_together() {
        let (signing, public) = key();
        let body = br#"[{"event":"delivered","sg_event_id":"e1"}]"#;
        let sig: Signature = signing.sign(&[b"1700000000".as_slice(), body].concat());
        let sig = STANDARD.encode(sig.to_der().as_bytes());
        assert!(public.verify(Some(&sig), Some("1700000000"), body).is_ok());
        assert_eq!(
            public.verify(Some(&sig), Some("1700000001"), body),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            public.verify(Some(&sig), Some("1700000000"), b"[]"),
            Err(Refused::BadSignature)
        );
        assert!(matches!(
            public.verify(None, Some("1700000000"), body),
            Err(Refused::Unsigned(_))
        ));
        assert_eq!(
            public.verify(Some("bm9wZQ=="), Some("1700000000"), body),
            Err(Refused::BadSignature)
        );
        assert!(EventKey::parse("not a key").is_err());
    }

    #[test]
    fn maps_events() {
        let body = serde_json::json!([
            {"event": "delivered", "sg_event_id": "a", "herald_delivery_id": "0191e8a0-0000-7000-8000-000000000001", "herald_created_at": "1764500000000000"},
            {"event": "bounce", "type": "bounce", "sg_event_id": "b", "status": "5.1.1", "reason": "no such user"},
            {"event": "bounce", "type": "blocked", "sg_event_id": "c", "reason": "IP listed"},
            {"event": "spamreport", "sg_event_id": "d"},
            {"event": "open", "sg_event_id": "e"},
        ]);
        let r = receipts(body.to_string().as_bytes()).unwrap();
        assert_eq!(r[0].status, Some(ReceiptStatus::Delivered));
        assert!(r[0].delivery.is_some());
        assert_eq!(
            (r[1].status, r[1].suppress),
            (
                Some(ReceiptStatus::Bounced),
                Some(SuppressionReason::HardBounce)
            )
        );
        assert_eq!(
            r[1].reason.as_deref(),
            Some("sendgrid bounce: 5.1.1 no such user")
        );
        assert!(r[1].delivery.is_none());
        assert_eq!(
            (r[2].status, r[2].suppress),
            (Some(ReceiptStatus::Undelivered), None)
        );
        assert_eq!(
            (r[3].status, r[3].suppress),
            (
                Some(ReceiptStatus::Complained),
                Some(SuppressionReason::Complaint)
            )
        );
        assert_eq!((r[4].status, r[4].suppress), (None, None));
        assert!(receipts(b"{}").is_err());
    }
}
