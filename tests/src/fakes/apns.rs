//! A fake APNs: HTTP/2 over cleartext (h2c, prior knowledge) on loopback,
//! checking the provider API's path, headers and ES256 provider token the
//! way Apple does, and answering with Apple's reasons.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use p256::{
    SecretKey,
    pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding},
};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use super::{Journal, Recorded, Script, Scripted, Task, TempFiles};

/// Apple refuses a provider token older than an hour.
const TOKEN_MAX_AGE: u64 = 3600;

struct State {
    topic: String,
    key_id: String,
    team_id: String,
    private_pem: String,
    public_key: DecodingKey,
    journal: Journal,
    script: Script,
    connections: Mutex<usize>,
}

/// The fake APNs.
pub struct ApnsFake {
    addr: SocketAddr,
    state: Arc<State>,
    files: TempFiles,
    _task: Task,
}

impl ApnsFake {
    /// Starts the fake with a fresh P-256 signing key, for the app
    /// `com.example.herald`.
    pub async fn start() -> Self {
        let secret = SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let private_pem = secret
            .to_pkcs8_pem(LineEnding::LF)
            .expect("pem")
            .to_string();
        let public_pem = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("public pem");
        let state = Arc::new(State {
            topic: "com.example.herald".into(),
            key_id: "ABC123DEFG".into(),
            team_id: "DEF123GHIJ".into(),
            private_pem,
            public_key: DecodingKey::from_ec_pem(public_pem.as_bytes()).expect("public key"),
            journal: Journal::default(),
            script: Script::default(),
            connections: Mutex::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *shared.connections.lock().expect("count") += 1;
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, request).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            files: TempFiles::default(),
            _task: Task(task),
        }
    }

    /// `http://127.0.0.1:port` (`APNS_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes the signing key as an Apple-style `.p8` file (`APNS_KEY_FILE`).
    pub fn key_file(&self) -> PathBuf {
        let name = format!("AuthKey_{}.p8", self.state.key_id);
        self.files.write(&name, &self.state.private_pem)
    }

    /// The key's id (`APNS_KEY_ID`).
    pub fn key_id(&self) -> &str {
        &self.state.key_id
    }

    /// The team id (`APNS_TEAM_ID`).
    pub fn team_id(&self) -> &str {
        &self.state.team_id
    }

    /// The app's bundle id (`APNS_TOPIC`).
    pub fn topic(&self) -> &str {
        &self.state.topic
    }

    /// Queues an answer for the next valid request.
    pub fn push_response(&self, status: u16, body: impl Into<String>, headers: &[(&str, &str)]) {
        self.state.script.push(Scripted::new(status, body, headers));
    }

    /// Queues any scripted answer (e.g. a delayed one).
    pub fn push_scripted(&self, answer: Scripted) {
        self.state.script.push(answer);
    }

    /// Queues Apple's error answer `{"reason": reason}` (410 adds a timestamp).
    pub fn push_reason(&self, status: u16, reason: &str) {
        self.push_response(status, reason_body(status, reason), &[]);
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.journal.all()
    }

    /// Connections accepted (APNs clients should reuse one).
    pub fn connections(&self) -> usize {
        *self.state.connections.lock().expect("count")
    }
}

fn reason_body(status: u16, reason: &str) -> String {
    if status == 410 {
        let now_ms = chrono::Utc::now().timestamp_millis();
        json!({"reason": reason, "timestamp": now_ms}).to_string()
    } else {
        json!({"reason": reason}).to_string()
    }
}

async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let recorded = Recorded::from_parts(
        parts.method.as_str(),
        parts.uri.path(),
        parts.version,
        &parts.headers,
        body,
    );
    state.journal.record(recorded.clone());
    let apns_id = recorded
        .header("apns-id")
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string().to_uppercase());
    let answer = match check(state, &recorded) {
        Err((status, reason)) => Scripted::new(status, reason_body(status, reason), &[]),
        Ok(()) => state
            .script
            .next()
            .unwrap_or_else(|| Scripted::new(200, "", &[])),
    };
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::builder()
        .status(answer.status)
        .header("apns-id", apns_id);
    if !answer.body.is_empty() {
        response = response.header("content-type", "application/json");
    }
    for (name, value) in &answer.headers {
        response = response.header(name, value);
    }
    response
        .body(Full::new(Bytes::from(answer.body)))
        .expect("response")
}

/// Apple's checks, in the order its documentation lists the reasons.
fn check(state: &State, request: &Recorded) -> Result<(), (u16, &'static str)> {
    if request.method != "POST" {
        return Err((405, "MethodNotAllowed"));
    }
    let Some(token) = request.path.strip_prefix("/3/device/") else {
        return Err((404, "BadPath"));
    };
    if token.is_empty() {
        return Err((400, "MissingDeviceToken"));
    }
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((400, "BadDeviceToken"));
    }
    check_token(state, request.header("authorization"))?;
    match request.header("apns-topic") {
        None => return Err((400, "MissingTopic")),
        Some(topic) if topic != state.topic => return Err((400, "DeviceTokenNotForTopic")),
        Some(_) => {}
    }
    let push_types = [
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
    ];
    if !request
        .header("apns-push-type")
        .is_some_and(|t| push_types.contains(&t))
    {
        return Err((400, "InvalidPushType"));
    }
    if let Some(p) = request.header("apns-priority")
        && !matches!(p, "1" | "5" | "10")
    {
        return Err((400, "BadPriority"));
    }
    if request
        .header("apns-collapse-id")
        .is_some_and(|c| c.len() > 64)
    {
        return Err((400, "BadCollapseId"));
    }
    if request
        .header("apns-expiration")
        .is_some_and(|e| e.parse::<u64>().is_err())
    {
        return Err((400, "BadExpirationDate"));
    }
    if request
        .header("apns-id")
        .is_some_and(|id| uuid::Uuid::parse_str(id).is_err())
    {
        return Err((400, "BadMessageId"));
    }
    if request.body.is_empty() {
        return Err((400, "PayloadEmpty"));
    }
    if request.body.len() > 4096 {
        return Err((413, "PayloadTooLarge"));
    }
    if request.json().get("aps").is_none_or(|aps| !aps.is_object()) {
        return Err((400, "BadPayload"));
    }
    Ok(())
}

fn check_token(state: &State, authorization: Option<&str>) -> Result<(), (u16, &'static str)> {
    let Some(jwt) = authorization.and_then(|a| a.strip_prefix("bearer ")) else {
        return Err((403, "MissingProviderToken"));
    };
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| (403, "InvalidProviderToken"))?;
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(state.key_id.as_str()) {
        return Err((403, "InvalidProviderToken"));
    }
    #[derive(Deserialize)]
    struct Claims {
        iss: String,
        iat: u64,
    }
    let mut validation = Validation::new(Algorithm::ES256);
    // Provider tokens carry no `exp`: their age is judged by `iat`.
    validation.set_required_spec_claims::<&str>(&[]);
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Claims>(jwt, &state.public_key, &validation)
        .map_err(|_| (403, "InvalidProviderToken"))?
        .claims;
    if claims.iss != state.team_id {
        return Err((403, "InvalidProviderToken"));
    }
    let now = jsonwebtoken::get_current_timestamp();
    if claims.iat + TOKEN_MAX_AGE < now {
        return Err((403, "ExpiredProviderToken"));
    }
    Ok(())
}
