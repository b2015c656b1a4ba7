//! A fake FCM: Google's OAuth2 token endpoint (JWT-bearer grant) and the
//! HTTP v1 `messages:send` endpoint, answering in Google's error format.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Body,
    http::{Request, Response},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::{
    RsaPrivateKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Journal, Recorded, Script, Scripted, Task, TempFiles, serve};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// A throwaway RSA key pair standing in for a service account's key.
/// Generated once per test process: 2048-bit generation takes a moment.
pub struct TestRsaKey {
    pub private_pem: String,
    pub public_pem: String,
}

/// The process's test RSA key (PKCS#8 PEM, as Google's credentials files
/// carry it).
pub fn test_rsa_key() -> &'static TestRsaKey {
    static KEY: OnceLock<TestRsaKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
        TestRsaKey {
            private_pem: key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string(),
            public_pem: key
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("public pem"),
        }
    })
}

struct State {
    project_id: String,
    client_email: String,
    token_url: OnceLock<String>,
    public_key: DecodingKey,
    issued: Mutex<Vec<String>>,
    token_ttl: AtomicU64,
    sends: Journal,
    token_requests: Journal,
    send_script: Script,
    token_script: Script,
    counter: AtomicU64,
}

/// The fake FCM.
pub struct FcmFake {
    addr: SocketAddr,
    state: Arc<State>,
    files: TempFiles,
    _task: Task,
}

impl FcmFake {
    /// Starts the fake for project `herald-test`.
    pub async fn start() -> Self {
        let state = Arc::new(State {
            project_id: "herald-test".into(),
            client_email: "herald@herald-test.iam.gserviceaccount.com".into(),
            token_url: OnceLock::new(),
            public_key: DecodingKey::from_rsa_pem(test_rsa_key().public_pem.as_bytes())
                .expect("public key"),
            issued: Mutex::new(Vec::new()),
            token_ttl: AtomicU64::new(3600),
            sends: Journal::default(),
            token_requests: Journal::default(),
            send_script: Script::default(),
            token_script: Script::default(),
            counter: AtomicU64::new(0),
        });
        let shared = state.clone();
        let router = Router::new().fallback(move |request: Request<Body>| {
            let state = shared.clone();
            async move { handle(&state, request).await }
        });
        let (addr, task) = serve(router).await;
        state
            .token_url
            .set(format!("http://{addr}/token"))
            .expect("once");
        Self {
            addr,
            state,
            files: TempFiles::default(),
            _task: task,
        }
    }

    /// The FCM base URL (`FCM_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint (`FCM_TOKEN_URL`, and the credentials' `token_uri`).
    pub fn token_url(&self) -> String {
        self.state.token_url.get().expect("set").clone()
    }

    /// The project the fake serves (`FCM_PROJECT_ID`).
    pub fn project_id(&self) -> &str {
        &self.state.project_id
    }

    /// The service account's email.
    pub fn client_email(&self) -> &str {
        &self.state.client_email
    }

    /// Writes a service-account credentials file this fake accepts and
    /// returns its path.
    pub fn credentials_file(&self) -> PathBuf {
        let json = json!({
            "type": "service_account",
            "project_id": self.state.project_id,
            "private_key_id": "0000000000000000000000000000000000000000",
            "private_key": test_rsa_key().private_pem,
            "client_email": self.state.client_email,
            "client_id": "100000000000000000000",
            "token_uri": self.token_url(),
        });
        self.files.write("fcm-credentials.json", &json.to_string())
    }

    /// Queues an answer for the next `messages:send`.
    pub fn push_response(&self, status: u16, body: impl Into<String>, headers: &[(&str, &str)]) {
        self.state
            .send_script
            .push(Scripted::new(status, body, headers));
    }

    /// Queues any scripted answer (e.g. a delayed one) for the next send.
    pub fn push_scripted(&self, answer: Scripted) {
        self.state.send_script.push(answer);
    }

    /// Queues an FCM error for the next send, in Google's format: `status` is
    /// the canonical status (`NOT_FOUND`), `error_code` FCM's (`UNREGISTERED`).
    pub fn push_error(&self, http: u16, status: &str, error_code: &str, headers: &[(&str, &str)]) {
        self.push_response(
            http,
            fcm_error(http, status, error_code, error_code),
            headers,
        );
    }

    /// Queues an answer for the next token request.
    pub fn push_token_response(&self, status: u16, body: impl Into<String>) {
        self.state
            .token_script
            .push(Scripted::new(status, body, &[]));
    }

    /// Invalidates every access token issued so far, as a key rotation does.
    pub fn revoke_tokens(&self) {
        self.state.issued.lock().expect("issued").clear();
    }

    /// Sets the `expires_in` of tokens issued from now on.
    pub fn set_token_ttl(&self, seconds: u64) {
        self.state.token_ttl.store(seconds, Ordering::SeqCst);
    }

    /// Scripted answers not given yet.
    pub fn scripted_left(&self) -> usize {
        self.state.send_script.len()
    }

    /// Drops the scripted answers not given yet.
    pub fn clear_script(&self) {
        self.state.send_script.clear();
    }

    /// How many `messages:send` requests arrived.
    pub fn request_count(&self) -> usize {
        self.state.sends.len()
    }

    /// Calls `f` with each request after the first `from`, without copying
    /// them; answers how many there were (see [`Journal::each_since`]).
    pub fn each_request_since(&self, from: usize, f: impl FnMut(&Recorded)) -> usize {
        self.state.sends.each_since(from, f)
    }

    /// Every `messages:send` request (and any request to an unknown path).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.sends.all()
    }

    /// Every token request.
    pub fn token_requests(&self) -> Vec<Recorded> {
        self.state.token_requests.all()
    }
}

/// Google's error JSON with an FCM error detail.
pub fn fcm_error(http: u16, status: &str, error_code: &str, message: &str) -> String {
    json!({"error": {
        "code": http,
        "message": message,
        "status": status,
        "details": [{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": error_code,
        }],
    }})
    .to_string()
}

fn google_error(http: u16, status: &str, message: &str) -> Scripted {
    let body = json!({"error": {"code": http, "message": message, "status": status}});
    Scripted::new(http, body.to_string(), &[])
}

fn bad_request(field: &str, description: &str) -> Scripted {
    let body = json!({"error": {
        "code": 400,
        "message": description,
        "status": "INVALID_ARGUMENT",
        "details": [{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": field, "description": description}],
        }],
    }});
    Scripted::new(400, body.to_string(), &[])
}

async fn handle(state: &State, request: Request<Body>) -> Response<Body> {
    let recorded = Recorded::read(request).await;
    if recorded.path == "/token" {
        state.token_requests.record(recorded.clone());
        return token(state, &recorded).into_response().await;
    }
    // Answered, then recorded (without a copy), then sent: the journal
    // holds the request before its caller has the answer.
    let answer = send(state, &recorded);
    state.sends.record(recorded);
    answer.into_response().await
}

fn token(state: &State, request: &Recorded) -> Scripted {
    let oauth_error = |error: &str, description: &str| {
        let body = json!({"error": error, "error_description": description});
        Scripted::new(400, body.to_string(), &[])
    };
    if request.method != "POST" {
        return Scripted::new(405, "", &[]);
    }
    let form = request.form();
    if form.get("grant_type").map(String::as_str) != Some(GRANT_TYPE) {
        return oauth_error("unsupported_grant_type", "Invalid grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    #[derive(Deserialize)]
    struct Claims {
        scope: String,
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[state.token_url.get().expect("set")]);
    validation.set_issuer(&[&state.client_email]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    match jsonwebtoken::decode::<Claims>(assertion, &state.public_key, &validation) {
        Ok(data) if data.claims.scope.split(' ').any(|s| s == SCOPE) => {}
        Ok(_) => return oauth_error("invalid_scope", "Invalid OAuth scope"),
        Err(err) => return oauth_error("invalid_grant", &format!("Invalid JWT: {err}")),
    }
    if let Some(scripted) = state.token_script.next() {
        return scripted;
    }
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let access = format!("ya29.fake-{n}-{}", uuid::Uuid::new_v4().simple());
    state.issued.lock().expect("issued").push(access.clone());
    let body = json!({
        "access_token": access,
        "expires_in": state.token_ttl.load(Ordering::SeqCst),
        "token_type": "Bearer",
    });
    Scripted::new(200, body.to_string(), &[])
}

fn send(state: &State, request: &Recorded) -> Scripted {
    let expected = format!("/v1/projects/{}/messages:send", state.project_id);
    if !request.path.starts_with("/v1/projects/") || !request.path.ends_with("/messages:send") {
        return google_error(404, "NOT_FOUND", "Not Found");
    }
    if request.method != "POST" {
        return google_error(405, "METHOD_NOT_ALLOWED", "Method Not Allowed");
    }
    let bearer = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "));
    let known = bearer.is_some_and(|t| state.issued.lock().expect("issued").iter().any(|i| i == t));
    if !known {
        return google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        );
    }
    if request.path != expected {
        return google_error(
            403,
            "PERMISSION_DENIED",
            "Permission 'cloudmessaging.messages.create' denied on resource (or it may not exist).",
        );
    }
    if let Err(refusal) = check_message(&request.json()) {
        return refusal;
    }
    if let Some(scripted) = state.send_script.next() {
        return scripted;
    }
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let name = format!("projects/{}/messages/0:{n}", state.project_id);
    Scripted::new(200, json!({ "name": name }).to_string(), &[])
}

/// The checks FCM makes of a message's shape.
fn check_message(body: &Value) -> Result<(), Scripted> {
    let Some(message) = body.get("message").and_then(Value::as_object) else {
        return Err(bad_request("message", "Required field is missing"));
    };
    match message.get("token").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => {}
        _ => {
            return Err(Scripted::new(
                400,
                fcm_error(
                    400,
                    "INVALID_ARGUMENT",
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token",
                ),
                &[],
            ));
        }
    }
    if let Some(notification) = message.get("notification") {
        for field in ["title", "body"] {
            if notification.get(field).is_some_and(|v| !v.is_string()) {
                return Err(bad_request(
                    &format!("message.notification.{field}"),
                    "Invalid value",
                ));
            }
        }
    }
    if let Some(data) = message.get("data") {
        let all_strings = data
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string));
        if !all_strings {
            return Err(bad_request("message.data", "Invalid value (TYPE_STRING)"));
        }
    }
    if let Some(android) = message.get("android") {
        if let Some(p) = android.get("priority")
            && p != "HIGH"
            && p != "NORMAL"
        {
            return Err(bad_request("message.android.priority", "Invalid value"));
        }
        if let Some(ttl) = android.get("ttl") {
            let ok = ttl
                .as_str()
                .and_then(|t| t.strip_suffix('s'))
                .is_some_and(|n| n.parse::<f64>().is_ok_and(|n| n >= 0.0));
            if !ok {
                return Err(bad_request("message.android.ttl", "Invalid duration"));
            }
        }
    }
    Ok(())
}
