//! Twilio status callbacks. The SMS worker asks for one per message
//! (`StatusCallback`, [`crate::providers::twilio::status_callback_url`]), a
//! URL that names the delivery; Twilio posts a form to it on every status
//! change of the message, signed as Twilio's webhook security documents it:
//!
//! `X-Twilio-Signature` = base64(HMAC-SHA1(auth token, the full URL Twilio
//! called, then every POST parameter's name and value, sorted by name, with
//! nothing between them)).
//!
//! The URL is the public one Twilio called (`RECEIPTS_BASE_URL` and the
//! path and query of the request), not what a proxy in front of ingest
//! rewrote it to.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use chrono::DateTime;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{DeliveryRef, Receipt, ReceiptStatus, Refused};
use crate::model::suppression::SuppressionReason;

/// The provider's name in receipts and metrics.
pub const PROVIDER: &str = "twilio";
/// The signature header.
pub const SIGNATURE: &str = "x-twilio-signature";
/// Twilio's error code for a recipient who opted out (replied STOP).
pub const UNSUBSCRIBED: &str = "21610";

/// Twilio's signature of a callback to `url` with form `params`.
pub fn signature(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token).expect("any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks `presented` (the header's value, if any) against the signature of
/// `url` and `params` under `auth_token`, in constant time.
pub fn verify(
    auth_token: &[u8],
    url: &str,
    params: &[(String, String)],
    presented: Option<&str>,
) -> Result<(), Refused> {
    let presented = presented
        .filter(|s| !s.is_empty())
        .ok_or(Refused::Unsigned("X-Twilio-Signature"))?;
    let expected = signature(auth_token, url, params);
    if expected
        .as_bytes()
        .ct_eq(presented.trim().as_bytes())
        .into()
    {
        Ok(())
    } else {
        Err(Refused::BadSignature)
    }
}

/// The delivery a callback path names: `{created_at in µs}/{delivery id}`
/// (the two segments after `/v1/receipts/twilio/`).
pub fn delivery_of(created_micros: &str, id: &str) -> Option<DeliveryRef> {
    Some(DeliveryRef {
        created_at: DateTime::from_timestamp_micros(created_micros.parse().ok()?)?,
        id: id.parse::<Uuid>().ok()?,
    })
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// Reads a verified callback's form into a receipt for `delivery`.
pub fn receipt(
    params: &[(String, String)],
    delivery: Option<DeliveryRef>,
) -> Result<Receipt, Refused> {
    let sid = param(params, "MessageSid")
        .or_else(|| param(params, "SmsSid"))
        .ok_or_else(|| Refused::Malformed("the callback has no MessageSid".into()))?;
    let status = param(params, "MessageStatus")
        .or_else(|| param(params, "SmsStatus"))
        .ok_or_else(|| Refused::Malformed("the callback has no MessageStatus".into()))?;
    let code = param(params, "ErrorCode");
    let (moved, suppress) = match status {
        "delivered" => (Some(ReceiptStatus::Delivered), None),
        "undelivered" | "failed" => (
            Some(ReceiptStatus::Undelivered),
            (code == Some(UNSUBSCRIBED)).then_some(SuppressionReason::Unsubscribed),
        ),
        _ => (None, None),
    };
    let reason = match (code, moved) {
        (Some(code), _) => Some(format!("twilio {status}: error {code}")),
        (None, Some(ReceiptStatus::Undelivered)) => Some(format!("twilio {status}")),
        _ => None,
    };
    Ok(Receipt {
        provider: PROVIDER,
        // One callback per status of a message: a second with the same
        // pair is Twilio (or someone) sending it again.
        event_id: format!("{sid}:{status}"),
        event: status.to_owned(),
        delivery,
        status: moved,
        reason,
        suppress,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn signs_as_twilio_documents_it() {
        // The example of Twilio's webhook security page: auth token
        // 12345, this URL and these parameters.
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = form(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        let sig = signature(b"12345", url, &params);
        assert_eq!(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(verify(b"12345", url, &params, Some(&sig)).is_ok());
        assert_eq!(
            verify(b"12345", url, &params, Some("0/KCTR6DLpKmkAf8muzZqo1nDgR=")),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(b"12345", url, &params, None),
            Err(Refused::Unsigned("X-Twilio-Signature"))
        );
        let mut changed = params.clone();
        changed[2].1 = "9999".into();
        assert_eq!(
            verify(b"12345", url, &changed, Some(&sig)),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn maps_statuses_and_the_opt_out_code() {
        let d = delivery_of("1764500000000000", "0191e8a0-0000-7000-8000-000000000001");
        assert!(d.is_some());
        let r = receipt(
            &form(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]),
            d,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.event_id.as_str(), r.suppress),
            (Some(ReceiptStatus::Delivered), "SM1:delivered", None)
        );
        let r = receipt(
            &form(&[
                ("MessageSid", "SM1"),
                ("MessageStatus", "undelivered"),
                ("ErrorCode", "21610"),
            ]),
            d,
        )
        .unwrap();
        assert_eq!(r.status, Some(ReceiptStatus::Undelivered));
        assert_eq!(r.suppress, Some(SuppressionReason::Unsubscribed));
        assert_eq!(r.reason.as_deref(), Some("twilio undelivered: error 21610"));
        let r = receipt(
            &form(&[
                ("MessageSid", "SM1"),
                ("MessageStatus", "failed"),
                ("ErrorCode", "30003"),
            ]),
            d,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.suppress),
            (Some(ReceiptStatus::Undelivered), None)
        );
        let r = receipt(
            &form(&[("MessageSid", "SM1"), ("MessageStatus", "sent")]),
            d,
        )
        .unwrap();
        assert_eq!(r.status, None);
        assert!(receipt(&form(&[("MessageStatus", "sent")]), d).is_err());
        assert_eq!(delivery_of("soon", "x"), None);
    }
}
