//! Fake providers on loopback that speak each provider's real wire protocol.
//!
//! Every fake starts on `127.0.0.1:0`, records each request it receives
//! (`requests()`), and answers from a queue of scripted responses
//! (`push_response(...)`), falling back to the provider's success answer
//! when the queue is empty. Requests are checked the way the real provider
//! checks them (auth, paths, required fields) before any script applies, so
//! a malformed request is refused even in a scripted test.

pub mod apns;
pub mod email_api;
pub mod fcm;
pub mod sendgrid;
pub mod smtp;
pub mod twilio;

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, to_bytes},
    http::{Request, Response, StatusCode},
};
use tokio::{net::TcpListener, task::JoinHandle};

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the fake received it: retry gaps are measured between these,
    /// and fault scenarios measure how soon after a fault deliveries flow.
    pub received: Instant,
}

impl Recorded {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as an `application/x-www-form-urlencoded` form.
    pub fn form(&self) -> BTreeMap<String, String> {
        parse_form(&self.text())
    }

    pub(crate) fn from_parts(
        method: &str,
        path: &str,
        version: axum::http::Version,
        headers: &axum::http::HeaderMap,
        body: Vec<u8>,
    ) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            version: format!("{version:?}"),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            received: Instant::now(),
        }
    }

    /// Reads an axum request whole.
    pub(crate) async fn read(request: Request<Body>) -> Self {
        let (parts, body) = request.into_parts();
        let body = to_bytes(body, 16 * 1024 * 1024)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        Self::from_parts(
            parts.method.as_str(),
            parts.uri.path(),
            parts.version,
            &parts.headers,
            body,
        )
    }
}

/// Decodes `a=1&b=x%20y+z`.
pub fn parse_form(text: &str) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => match s
                    .get(i + 1..i + 3)
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// Wait this long before answering (timeouts).
    pub delay: Option<Duration>,
}

impl Scripted {
    /// An answer with `status`, `body` and extra `headers`.
    pub fn new(status: u16, body: impl Into<String>, headers: &[(&str, &str)]) -> Self {
        Self {
            status,
            body: body.into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            delay: None,
        }
    }

    /// The same answer, given only after `delay`.
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// As an axum response; JSON unless a `content-type` was scripted.
    pub(crate) async fn into_response(self) -> Response<Body> {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let mut builder = Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            builder = builder.header("content-type", "application/json");
        }
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder.body(Body::from(self.body)).expect("response")
    }
}

/// A queue of scripted answers, shared with the server task.
#[derive(Debug, Clone, Default)]
pub struct Script(Arc<Mutex<VecDeque<Scripted>>>);

impl Script {
    /// Queues an answer for the next request.
    pub fn push(&self, answer: Scripted) {
        self.0.lock().expect("script").push_back(answer);
    }

    /// The next scripted answer, if any is left.
    pub fn next(&self) -> Option<Scripted> {
        self.0.lock().expect("script").pop_front()
    }

    /// Answers still queued.
    pub fn len(&self) -> usize {
        self.0.lock().expect("script").len()
    }

    /// Whether no answer is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every queued answer: the provider is well again.
    pub fn clear(&self) {
        self.0.lock().expect("script").clear();
    }
}

/// Requests received, shared with the server task.
#[derive(Debug, Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<Recorded>>>);

impl Journal {
    /// Records a request.
    pub fn record(&self, request: Recorded) {
        self.0.lock().expect("journal").push(request);
    }

    /// Everything recorded so far.
    pub fn all(&self) -> Vec<Recorded> {
        self.0.lock().expect("journal").clone()
    }

    /// How many requests were recorded.
    pub fn len(&self) -> usize {
        self.0.lock().expect("journal").len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with each request recorded after the first `from`, in
    /// order, without copying them; answers how many there were (a
    /// benchmark reads a long journal in steps, and what it reads is on the
    /// machine it measures).
    pub fn each_since(&self, from: usize, mut f: impl FnMut(&Recorded)) -> usize {
        let all = self.0.lock().expect("journal");
        let new = all.get(from..).unwrap_or_default();
        new.iter().for_each(&mut f);
        new.len()
    }
}

/// A server task that stops with its owner.
pub(crate) struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves an axum router on a fresh loopback port.
pub(crate) async fn serve(router: axum::Router) -> (SocketAddr, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, Task(task))
}

/// A TCP server that accepts connections and never says a word: the
/// provider that hangs, for timeout tests.
pub struct Silent {
    addr: SocketAddr,
    _task: Task,
}

impl Silent {
    /// Starts listening on a fresh loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self {
            addr,
            _task: Task(task),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A loopback port nothing listens on (connections are refused).
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A path for a throwaway file in the system's temporary directory.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "herald-test-{}-{name}",
        uuid::Uuid::new_v4().simple()
    ))
}

/// Files a fake wrote (credentials, keys), removed when it is dropped.
#[derive(Default)]
pub(crate) struct TempFiles(Mutex<Vec<PathBuf>>);

impl TempFiles {
    /// Writes `contents` to a fresh temporary file named after `name`.
    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = temp_path(name);
        std::fs::write(&path, contents).expect("write temporary file");
        self.0.lock().expect("files").push(path.clone());
        path
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for path in self.0.lock().expect("files").drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}
