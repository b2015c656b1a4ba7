//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>):
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//! keyed with the secret's bytes (the base64 after `whsec_`). While a secret
//! is rotated, the old and the new one both sign: the header carries one
//! `v1,` signature per secret, separated by spaces, and a receiver accepts
//! the message if any one verifies.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Header carrying the message id (the event id: stable across retries).
pub const ID_HEADER: &str = "webhook-id";
/// Header carrying the Unix time of this attempt, in seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Header carrying the signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// How far a receiver lets a timestamp stray from its clock: the
/// specification's recommendation, which bounds replays of a captured
/// message.
pub const TOLERANCE_SECS: i64 = 5 * 60;

const PREFIX: &str = "whsec_";
/// Fresh secrets: 32 random bytes.
const GENERATED_LEN: usize = 32;
/// The specification asks for 24 to 64 bytes.
const MIN_LEN: usize = 24;
const MAX_LEN: usize = 64;

/// A signing secret, `whsec_` + base64 of its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a secret or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("a secret is `whsec_` followed by the base64 of 24 to 64 bytes")]
    BadSecret,
    #[error("the timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("the timestamp is more than {TOLERANCE_SECS} s away from now")]
    Stale,
    #[error("no signature matches")]
    NoMatch,
}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; GENERATED_LEN];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let encoded = text.strip_prefix(PREFIX).ok_or(SignatureError::BadSecret)?;
        let bytes = STANDARD
            .decode(encoded)
            .map_err(|_| SignatureError::BadSecret)?;
        if !(MIN_LEN..=MAX_LEN).contains(&bytes.len()) {
            return Err(SignatureError::BadSecret);
        }
        Ok(Self(bytes))
    }

    /// The secret as shown to its owner (once) and stored.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.0))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// This secret's `v1,<base64>` signature of a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// The `webhook-signature` value: one signature per secret (the current
/// one, and during a rotation's overlap the previous one), space-separated.
pub fn header(secrets: &[&Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A receiver's check, as the specification's reference libraries do it:
/// the timestamp within [`TOLERANCE_SECS`] of `now`, and any `v1` signature
/// of the header matching (compared in constant time).
pub fn verify(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
    now: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    let matched = signatures
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .any(|tag| secret.mac(id, ts, body).verify_slice(&tag).is_ok());
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector of the Standard Webhooks reference libraries' tests
    /// (standard-webhooks/standard-webhooks, libraries/rust/src/lib.rs,
    /// `test_sign`).
    const SPEC: (&str, &str, i64, &str, &str) = (
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        1649367553,
        r#"{"email":"test@example.com","username":"test_user"}"#,
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
    );
    /// The vector the specification's JavaScript library and Svix's use.
    const SVIX: (&str, &str, i64, &str, &str) = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        r#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    );

    #[test]
    fn signs_the_published_test_vectors() {
        for (secret, id, ts, body, expected) in [SPEC, SVIX] {
            let secret = Secret::parse(secret).unwrap();
            assert_eq!(secret.sign(id, ts, body.as_bytes()), expected);
            verify(&secret, id, &ts.to_string(), body.as_bytes(), expected, ts).unwrap();
        }
    }

    #[test]
    fn verification_refuses_what_the_specification_refuses() {
        let (secret, id, ts, body, sig) = SPEC;
        let secret = Secret::parse(secret).unwrap();
        let t = ts.to_string();
        let v2 = sig.replace("v1,", "v2,");
        // (why, message id, timestamp, body, signatures, now, refusal)
        #[rustfmt::skip]
        let cases = [
            ("another body", id, t.as_str(), "{}", sig, ts, SignatureError::NoMatch),
            ("another id", "msg_other", &t, body, sig, ts, SignatureError::NoMatch),
            ("too late", id, &t, body, sig, ts + TOLERANCE_SECS + 1, SignatureError::Stale),
            ("only v1 signatures count", id, &t, body, &v2, ts, SignatureError::NoMatch),
            ("no timestamp", id, "soon", body, sig, ts, SignatureError::BadTimestamp),
        ];
        for (why, id, timestamp, body, signatures, now, refusal) in cases {
            assert_eq!(
                verify(&secret, id, timestamp, body.as_bytes(), signatures, now),
                Err(refusal),
                "{why}"
            );
        }
    }

    #[test]
    fn during_a_rotation_both_secrets_sign_and_either_verifies() {
        let (old, new) = (Secret::generate(), Secret::generate());
        let h = header(&[&new, &old], "msg_1", 1_700_000_000, b"{}");
        assert_eq!(h.split(' ').count(), 2);
        for secret in [&old, &new] {
            verify(secret, "msg_1", "1700000000", b"{}", &h, 1_700_000_000).unwrap();
        }
        let stranger = Secret::generate();
        assert!(verify(&stranger, "msg_1", "1700000000", b"{}", &h, 1_700_000_000).is_err());
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let s = Secret::generate();
        let shown = s.expose();
        assert!(shown.starts_with("whsec_"));
        assert_eq!(Secret::parse(&shown).unwrap(), s);
        assert_eq!(format!("{s:?}"), "Secret(***)");
        for bad in [
            "",
            "whsec_",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            assert_eq!(Secret::parse(bad), Err(SignatureError::BadSecret), "{bad}");
        }
    }
}
