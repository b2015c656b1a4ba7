//! A fake HTTP email API (`EMAIL_PROVIDER=http`): JSON posts with a bearer
//! token, answered 202 with an id, or as scripted.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Body,
    http::{Request, Response},
};
use serde_json::json;

use super::{Journal, Recorded, Script, Scripted, Task, serve};

struct State {
    token: String,
    journal: Journal,
    script: Script,
}

/// The fake email API.
pub struct EmailApiFake {
    addr: SocketAddr,
    state: Arc<State>,
    _task: Task,
}

impl EmailApiFake {
    /// Starts the fake with a fresh bearer token.
    pub async fn start() -> Self {
        let state = Arc::new(State {
            token: uuid::Uuid::new_v4().simple().to_string(),
            journal: Journal::default(),
            script: Script::default(),
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

    /// The send endpoint (`EMAIL_HTTP_URL`).
    pub fn url(&self) -> String {
        format!("http://{}/v1/emails", self.addr)
    }

    /// The bearer token the fake accepts (`EMAIL_HTTP_TOKEN`).
    pub fn token(&self) -> &str {
        &self.state.token
    }

    /// Queues an answer for the next authorised request.
    pub fn push_response(&self, status: u16, body: impl Into<String>, headers: &[(&str, &str)]) {
        self.state.script.push(Scripted::new(status, body, headers));
    }

    /// Every request received.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.journal.all()
    }
}

async fn handle(state: &State, request: Request<Body>) -> Response<Body> {
    let recorded = Recorded::read(request).await;
    state.journal.record(recorded.clone());
    let bearer = format!("Bearer {}", state.token);
    let answer = if recorded.path != "/v1/emails" || recorded.method != "POST" {
        Scripted::new(404, json!({"error": "not found"}).to_string(), &[])
    } else if recorded.header("authorization") != Some(bearer.as_str()) {
        Scripted::new(401, json!({"error": "unauthorized"}).to_string(), &[])
    } else {
        let id = format!("em_{}", uuid::Uuid::new_v4().simple());
        state
            .script
            .next()
            .unwrap_or_else(|| Scripted::new(202, json!({ "id": id }).to_string(), &[]))
    };
    answer.into_response().await
}
