//! A fake Twilio Messages API: form posts to
//! `/2010-04-01/Accounts/{AccountSid}/Messages.json` with HTTP basic auth,
//! answered with a Twilio message resource or Twilio's error JSON. Like
//! Twilio, it posts status callbacks to a message's `StatusCallback`,
//! signed with its auth token (`X-Twilio-Signature`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body,
    http::{Request, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::json;

use super::{Journal, Recorded, Script, Scripted, Task, serve};

struct State {
    account_sid: String,
    auth_token: String,
    journal: Journal,
    script: Script,
    /// Messages accepted: the sid answered and the form posted.
    accepted: Mutex<Vec<Accepted>>,
}

/// A message the fake accepted (201).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub sid: String,
    pub form: BTreeMap<String, String>,
}

/// Twilio's webhook signature: base64(HMAC-SHA1(auth token, the URL, then
/// each POST parameter's name and value sorted by name)).
pub fn twilio_signature(auth_token: &str, url: &str, params: &BTreeMap<String, String>) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key");
    mac.update(url.as_bytes());
    // A BTreeMap iterates in key order: the sort Twilio's algorithm asks for.
    for (k, v) in params {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The fake Twilio.
pub struct TwilioFake {
    addr: SocketAddr,
    state: Arc<State>,
    _task: Task,
}

impl TwilioFake {
    /// Starts the fake with a fresh account SID and auth token.
    pub async fn start() -> Self {
        let state = Arc::new(State {
            account_sid: format!("AC{}", uuid::Uuid::new_v4().simple()),
            auth_token: uuid::Uuid::new_v4().simple().to_string(),
            journal: Journal::default(),
            script: Script::default(),
            accepted: Mutex::default(),
        });
        let shared = state.clone();
        let router = Router::new().fallback(move |request: Request<Body>| {
            let state = shared.clone();
            async move { handle(&state, request).await }
        });
        let (addr, task) = serve(router).await;
        Self {
            addr,
            state,
            _task: task,
        }
    }

    /// `http://127.0.0.1:port` (`TWILIO_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The account SID the fake accepts (`TWILIO_ACCOUNT_SID`).
    pub fn account_sid(&self) -> &str {
        &self.state.account_sid
    }

    /// The auth token the fake accepts (`TWILIO_AUTH_TOKEN`).
    pub fn auth_token(&self) -> &str {
        &self.state.auth_token
    }

    /// Queues an answer for the next valid request.
    pub fn push_response(&self, status: u16, body: impl Into<String>, headers: &[(&str, &str)]) {
        self.state.script.push(Scripted::new(status, body, headers));
    }

    /// Queues any scripted answer (e.g. a delayed one).
    pub fn push_scripted(&self, answer: Scripted) {
        self.state.script.push(answer);
    }

    /// Queues Twilio's error JSON with `code` for the next valid request.
    pub fn push_error(&self, status: u16, code: u32, message: &str, headers: &[(&str, &str)]) {
        self.push_response(status, twilio_error(status, code, message), headers);
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.journal.all()
    }

    /// Every message accepted, in order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// The form of a status callback about `message`: `status` (and an
    /// `ErrorCode` when given), as Twilio posts it.
    pub fn callback_form(
        &self,
        message: &Accepted,
        status: &str,
        error_code: Option<&str>,
    ) -> BTreeMap<String, String> {
        let mut form = BTreeMap::from([
            ("AccountSid".to_owned(), self.state.account_sid.clone()),
            ("ApiVersion".to_owned(), "2010-04-01".to_owned()),
            (
                "From".to_owned(),
                message.form.get("From").cloned().unwrap_or_default(),
            ),
            ("MessageSid".to_owned(), message.sid.clone()),
            ("MessageStatus".to_owned(), status.to_owned()),
            ("SmsSid".to_owned(), message.sid.clone()),
            ("SmsStatus".to_owned(), status.to_owned()),
            (
                "To".to_owned(),
                message.form.get("To").cloned().unwrap_or_default(),
            ),
        ]);
        if let Some(code) = error_code {
            form.insert("ErrorCode".to_owned(), code.to_owned());
        }
        form
    }

    /// Posts a status callback `form` to the message's `StatusCallback`
    /// signed with `signed_by` (the account's auth token, or a forger's).
    /// `public` is the base of the callback URL as Twilio sees it, `actual`
    /// where ingest really listens (a proxy between them in production).
    pub async fn post_callback(
        &self,
        message: &Accepted,
        form: &BTreeMap<String, String>,
        signed_by: Option<&str>,
        public: &str,
        actual: &str,
    ) -> reqwest::Response {
        let url = message
            .form
            .get("StatusCallback")
            .expect("the message asked for status callbacks");
        let path = url
            .strip_prefix(public)
            .expect("a callback under the public URL");
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", actual.trim_end_matches('/')))
            .header("User-Agent", "TwilioProxy/1.1")
            .form(form);
        if let Some(token) = signed_by {
            request = request.header("X-Twilio-Signature", twilio_signature(token, url, form));
        }
        request.send().await.expect("callback")
    }
}

/// Twilio's error resource.
pub fn twilio_error(status: u16, code: u32, message: &str) -> String {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    })
    .to_string()
}

fn error(status: u16, code: u32, message: &str) -> Scripted {
    Scripted::new(status, twilio_error(status, code, message), &[])
}

async fn handle(state: &State, request: Request<Body>) -> Response<Body> {
    let recorded = Recorded::read(request).await;
    state.journal.record(recorded.clone());
    answer(state, &recorded).into_response().await
}

fn answer(state: &State, request: &Recorded) -> Scripted {
    let Some(sid) = request
        .path
        .strip_prefix("/2010-04-01/Accounts/")
        .and_then(|rest| rest.strip_suffix("/Messages.json"))
    else {
        return error(404, 20404, "The requested resource was not found");
    };
    let credentials = request
        .header("authorization")
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let expected = format!("{}:{}", state.account_sid, state.auth_token);
    if credentials.as_deref() != Some(expected.as_str()) {
        return error(401, 20003, "Authenticate");
    }
    if sid != state.account_sid {
        return error(
            403,
            20003,
            "The account SID in the URL does not match the credentials",
        );
    }
    if request.method != "POST" {
        return error(405, 20004, "Method not allowed");
    }
    let form_type = request
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return error(
            400,
            20001,
            "Content-Type must be application/x-www-form-urlencoded",
        );
    }
    let form = request.form();
    let Some(to) = form.get("To").filter(|t| !t.is_empty()) else {
        return error(400, 21604, "A 'To' phone number is required.");
    };
    let has_sender = form
        .get("From")
        .or_else(|| form.get("MessagingServiceSid"))
        .is_some_and(|f| !f.is_empty());
    if !has_sender {
        return error(400, 21603, "A 'From' phone number is required.");
    }
    let Some(body) = form.get("Body").filter(|b| !b.is_empty()) else {
        return error(400, 21602, "Message body is required.");
    };
    if let Some(scripted) = state.script.next() {
        return scripted;
    }
    let message_sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    state.accepted.lock().unwrap().push(Accepted {
        sid: message_sid.clone(),
        form: form.clone(),
    });
    let now = chrono::Utc::now().to_rfc2822();
    let uri = format!("/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json");
    let resource = json!({
        "account_sid": sid,
        "api_version": "2010-04-01",
        "body": body,
        "date_created": now,
        "date_sent": null,
        "date_updated": now,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": form.get("From"),
        "messaging_service_sid": form.get("MessagingServiceSid"),
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": message_sid,
        "status": "queued",
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{sid}/Messages/{message_sid}/Media.json"),
        },
        "to": to,
        "uri": uri,
    });
    Scripted::new(201, resource.to_string(), &[])
}
