//! A fake SendGrid: the v3 Mail Send API (`POST /v3/mail/send`, bearer API
//! key, answered 202 with `X-Message-Id`, or SendGrid's error JSON), and its
//! Event Webhook: events posted to a URL signed like SendGrid signs them,
//! ECDSA P-256 over the timestamp header and the body, with a key pair made
//! for the test.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body,
    http::{Request, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use p256::{
    ecdsa::{Signature, SigningKey, signature::Signer},
    pkcs8::EncodePublicKey,
};
use serde_json::{Value, json};

use super::{Journal, Recorded, Scripted, Task, serve};

struct State {
    api_key: String,
    journal: Journal,
    /// Messages accepted: the id answered and the body posted.
    accepted: Mutex<Vec<(String, Value)>>,
}

/// The fake SendGrid.
pub struct SendGridFake {
    addr: SocketAddr,
    state: Arc<State>,
    signing: SigningKey,
    _task: Task,
}

fn sendgrid_error(status: u16, field: Option<&str>, message: &str) -> Scripted {
    Scripted::new(
        status,
        json!({"errors": [{"message": message, "field": field, "help": null}]}).to_string(),
        &[],
    )
}

impl SendGridFake {
    /// Starts the fake with a fresh API key and event signing key pair.
    pub async fn start() -> Self {
        let state = Arc::new(State {
            api_key: format!("SG.{}", uuid::Uuid::new_v4().simple()),
            journal: Journal::default(),
            accepted: Mutex::default(),
        });
        let shared = state.clone();
        let router = Router::new().fallback(move |request: Request<Body>| {
            let state = shared.clone();
            async move { handle(&state, request).await }
        });
        let (addr, task) = serve(router).await;
        // 32 random bytes are a valid P-256 scalar but with negligible odds.
        let seed = [
            uuid::Uuid::new_v4().into_bytes(),
            uuid::Uuid::new_v4().into_bytes(),
        ]
        .concat();
        let signing = SigningKey::from_slice(&seed).expect("a P-256 scalar");
        Self {
            addr,
            state,
            signing,
            _task: task,
        }
    }

    /// `http://127.0.0.1:port` (`SENDGRID_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API key the fake accepts (`SENDGRID_API_KEY`).
    pub fn api_key(&self) -> &str {
        &self.state.api_key
    }

    /// The Event Webhook verification key as SendGrid shows it: base64 of
    /// the DER public key (`SENDGRID_WEBHOOK_PUBLIC_KEY`).
    pub fn public_key(&self) -> String {
        let der = self
            .signing
            .verifying_key()
            .to_public_key_der()
            .expect("encodes");
        STANDARD.encode(der.as_bytes())
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.journal.all()
    }

    /// Every message accepted: its `X-Message-Id` and body.
    pub fn accepted(&self) -> Vec<(String, Value)> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// An event about an accepted message, as SendGrid posts it: its
    /// custom args copied in, `extra` fields added.
    pub fn event(&self, message: &(String, Value), event: &str, extra: Value) -> Value {
        let body = &message.1;
        let mut e = json!({
            "email": body["personalizations"][0]["to"][0]["email"],
            "timestamp": chrono::Utc::now().timestamp(),
            "event": event,
            "sg_event_id": format!("{}", uuid::Uuid::new_v4().simple()),
            "sg_message_id": format!("{}.filter0001", message.0),
            "smtp-id": format!("<{}@example.com>", message.0),
        });
        for source in [&body["custom_args"], &extra] {
            for (k, v) in source.as_object().into_iter().flatten() {
                e[k] = v.clone();
            }
        }
        e
    }

    /// The signature SendGrid sends with `body` at `timestamp`.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let signature: Signature = self.signing.sign(&[timestamp.as_bytes(), body].concat());
        STANDARD.encode(signature.to_der().as_bytes())
    }

    /// Posts `events` to `url` signed as SendGrid signs them; `tamper`
    /// changes the body after signing (a forgery).
    pub async fn post_events(&self, url: &str, events: &Value, tamper: bool) -> reqwest::Response {
        let body = serde_json::to_vec(events).unwrap();
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let signature = self.sign(&timestamp, &body);
        let body = if tamper {
            serde_json::to_vec(&json!([])).unwrap()
        } else {
            body
        };
        reqwest::Client::new()
            .post(url)
            .header("Content-Type", "application/json")
            .header("User-Agent", "SendGrid Event API")
            .header("X-Twilio-Email-Event-Webhook-Signature", signature)
            .header("X-Twilio-Email-Event-Webhook-Timestamp", timestamp)
            .body(body)
            .send()
            .await
            .expect("events post")
    }
}

async fn handle(state: &State, request: Request<Body>) -> Response<Body> {
    let recorded = Recorded::read(request).await;
    state.journal.record(recorded.clone());
    answer(state, &recorded).into_response().await
}

fn answer(state: &State, request: &Recorded) -> Scripted {
    if request.path != "/v3/mail/send" {
        return sendgrid_error(404, None, "Not found");
    }
    let expected = format!("Bearer {}", state.api_key);
    if request.header("authorization") != Some(expected.as_str()) {
        return sendgrid_error(
            401,
            None,
            "The provided authorization grant is invalid, expired, or revoked",
        );
    }
    if request.method != "POST" {
        return sendgrid_error(405, None, "Method not allowed");
    }
    let body = request.json();
    let to = body["personalizations"][0]["to"][0]["email"].as_str();
    if !to.is_some_and(|t| t.contains('@')) {
        return sendgrid_error(
            400,
            Some("personalizations.0.to.0.email"),
            "Does not contain a valid address.",
        );
    }
    if !body["from"]["email"]
        .as_str()
        .is_some_and(|f| f.contains('@'))
    {
        return sendgrid_error(
            400,
            Some("from.email"),
            "The from email does not contain a valid address.",
        );
    }
    if body["subject"].as_str().is_none_or(str::is_empty) {
        return sendgrid_error(400, Some("subject"), "The subject is required.");
    }
    let has_content = body["content"].as_array().is_some_and(|c| {
        c.iter()
            .any(|p| p["value"].as_str().is_some_and(|v| !v.is_empty()))
    });
    if !has_content {
        return sendgrid_error(
            400,
            Some("content"),
            "Unless a valid template_id is provided, the content parameter is required.",
        );
    }
    let custom_args_are_strings = body["custom_args"]
        .as_object()
        .is_none_or(|args| args.values().all(Value::is_string));
    if !custom_args_are_strings {
        return sendgrid_error(
            400,
            Some("custom_args"),
            "Custom args values must be strings.",
        );
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..22].to_owned();
    state.accepted.lock().unwrap().push((id.clone(), body));
    Scripted::new(202, "", &[("X-Message-Id", &id)])
}
