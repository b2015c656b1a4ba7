//! A fake SMTP relay: greeting, EHLO (PIPELINING, 8BITMIME, SIZE), MAIL,
//! RCPT, DATA with dot-unstuffing, RSET, NOOP and QUIT, several transactions
//! per connection, as a pooled client uses it; optionally TLS, by STARTTLS
//! or from the first byte, with a certificate from the test CA
//! (`tests/fixtures/tls`, [`CA_PEM`]).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::TcpListener,
    sync::watch,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

use super::Task;

/// One accepted message: its envelope and the raw message as received
/// (after dot-unstuffing, lines joined with CRLF).
#[derive(Debug, Clone)]
pub struct Envelope {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// The test CA that signed the relay's certificate (`localhost`,
/// `127.0.0.1`): what a client must trust (`SMTP_CA_FILE`).
pub const CA_PEM: &[u8] = include_bytes!("../../fixtures/tls/ca.pem");
const RELAY_CERT: &[u8] = include_bytes!("../../fixtures/tls/relay.pem");
const RELAY_KEY: &[u8] = include_bytes!("../../fixtures/tls/relay.key");

/// How the relay speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain text only.
    None,
    /// Offers STARTTLS after the greeting.
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

fn acceptor() -> TlsAcceptor {
    let certs = CertificateDer::pem_slice_iter(RELAY_CERT)
        .collect::<Result<Vec<_>, _>>()
        .expect("relay certificate");
    let key = PrivateKeyDer::from_pem_slice(RELAY_KEY).expect("relay key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("relay TLS config");
    TlsAcceptor::from(Arc::new(config))
}

#[derive(Default)]
struct State {
    messages: Mutex<Vec<Envelope>>,
    commands: Mutex<Vec<String>>,
    rcpt_replies: Mutex<VecDeque<String>>,
    rcpt_stall: Mutex<Option<Duration>>,
    data_replies: Mutex<VecDeque<String>>,
    connections: Mutex<usize>,
    /// Sessions not yet closed.
    live: Mutex<usize>,
    /// Sessions that ran TLS.
    encrypted: Mutex<usize>,
    /// Mail transactions in progress (MAIL accepted, DATA not finished) and
    /// the most there ever were at once.
    transactions: Mutex<(usize, usize)>,
}

impl State {
    fn transaction_started(&self) {
        let mut t = self.transactions.lock().expect("transactions");
        t.0 += 1;
        t.1 = t.1.max(t.0);
    }

    fn transaction_ended(&self) {
        let mut t = self.transactions.lock().expect("transactions");
        t.0 = t.0.saturating_sub(1);
    }
}

/// The fake relay.
pub struct SmtpFake {
    addr: SocketAddr,
    state: Arc<State>,
    tls: Tls,
    /// Bumped to make every session waiting for a command close.
    closing: watch::Sender<u64>,
    _task: Task,
}

impl SmtpFake {
    /// Starts a plain-text relay on a fresh loopback port.
    pub async fn start() -> Self {
        Self::start_with(Tls::None).await
    }

    /// Starts a relay speaking TLS as `tls` says.
    pub async fn start_with(tls: Tls) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let closing = watch::Sender::new(0);
        let shared = state.clone();
        let close = closing.subscribe();
        let acceptor = (tls != Tls::None).then(acceptor);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                *shared.connections.lock().expect("count") += 1;
                *shared.live.lock().expect("live") += 1;
                let state = shared.clone();
                let mut close = close.clone();
                close.mark_unchanged();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut open = false;
                    let _ = match (tls, acceptor) {
                        (Tls::Implicit, Some(acceptor)) => match acceptor.accept(stream).await {
                            Ok(stream) => {
                                *state.encrypted.lock().expect("encrypted") += 1;
                                session(&state, Box::new(stream), &mut open, close, true, None)
                                    .await
                            }
                            Err(_) => Ok(()),
                        },
                        (_, acceptor) => {
                            session(&state, Box::new(stream), &mut open, close, true, acceptor)
                                .await
                        }
                    };
                    if open {
                        state.transaction_ended();
                    }
                    *state.live.lock().expect("live") -= 1;
                });
            }
        });
        Self {
            addr,
            state,
            tls,
            closing,
            _task: Task(task),
        }
    }

    /// The relay's `SMTP_URL`: `smtp://127.0.0.1:port`, with
    /// `?tls=required` for STARTTLS, or `smtps://` for TLS from the start.
    pub fn url(&self) -> String {
        match self.tls {
            Tls::None => format!("smtp://{}", self.addr),
            Tls::StartTls => format!("smtp://{}?tls=required", self.addr),
            Tls::Implicit => format!("smtps://{}", self.addr),
        }
    }

    /// Sessions that ran TLS (after STARTTLS, or from the start).
    pub fn encrypted_sessions(&self) -> usize {
        *self.state.encrypted.lock().expect("encrypted")
    }

    /// Scripts the reply to the next RCPT, e.g. `(550, "5.1.1 User unknown")`.
    pub fn push_rcpt_reply(&self, code: u16, text: &str) {
        let reply = format!("{code} {text}");
        self.state
            .rcpt_replies
            .lock()
            .expect("replies")
            .push_back(reply);
    }

    /// Makes the relay wait `delay` before answering the next RCPT, as a
    /// relay stuck on a slow lookup does.
    pub fn stall_next_rcpt(&self, delay: Duration) {
        *self.state.rcpt_stall.lock().expect("stall") = Some(delay);
    }

    /// Scripts the reply to the next message's final dot, e.g.
    /// `(451, "4.3.0 Try again later")`.
    pub fn push_data_reply(&self, code: u16, text: &str) {
        let reply = format!("{code} {text}");
        self.state
            .data_replies
            .lock()
            .expect("replies")
            .push_back(reply);
    }

    /// Closes every session that is waiting for a command with `421`, as a
    /// relay does at its idle timeout or when it restarts, and returns once
    /// they are closed.
    pub async fn close_idle_sessions(&self) {
        self.closing.send_modify(|n| *n += 1);
        for _ in 0..200 {
            if *self.state.live.lock().expect("live") == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("sessions still open after 2 s");
    }

    /// Messages accepted (250 after DATA).
    pub fn messages(&self) -> Vec<Envelope> {
        self.state.messages.lock().expect("messages").clone()
    }

    /// Every command line received, in order, across connections.
    pub fn commands(&self) -> Vec<String> {
        self.state.commands.lock().expect("commands").clone()
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        *self.state.connections.lock().expect("count")
    }

    /// The most mail transactions that were ever in progress at once, across
    /// connections: the parallel sessions a sender actually used.
    pub fn peak_transactions(&self) -> usize {
        self.state.transactions.lock().expect("transactions").1
    }
}

/// The address inside `FROM:<a@b>` / `TO:<a@b>`, parameters dropped.
fn path_arg(rest: &str) -> Option<String> {
    let start = rest.find('<')?;
    let end = rest[start..].find('>')? + start;
    Some(rest[start + 1..end].to_owned())
}

/// A session's byte stream: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One SMTP session over `stream`. `greet`: send the greeting (not again
/// after STARTTLS); `starttls`: offer STARTTLS and upgrade with it.
async fn session(
    state: &State,
    stream: Box<dyn Io>,
    open: &mut bool,
    mut closing: watch::Receiver<u64>,
    greet: bool,
    starttls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = BufReader::new(read);
    if greet {
        write
            .write_all(b"220 fake.smtp.test ESMTP ready\r\n")
            .await?;
    }
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut queued = 0u32;
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let read = tokio::select! {
            read = reader.read_until(b'\n', &mut raw) => read?,
            _ = closing.changed() => {
                write
                    .write_all(b"421 4.4.2 fake.smtp.test Error: timeout exceeded\r\n")
                    .await?;
                return Ok(());
            }
        };
        if read == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(&raw).trim_end().to_owned();
        state.commands.lock().expect("commands").push(line.clone());
        let upper = line.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("");
        let reply: String = match verb {
            "EHLO" => {
                let name = line.split_whitespace().nth(1).unwrap_or("client");
                let tls = if starttls.is_some() {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                format!(
                    "250-fake.smtp.test greets {name}\r\n{tls}250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760"
                )
            }
            "STARTTLS" if starttls.is_some() => {
                write.write_all(b"220 2.0.0 Ready to start TLS\r\n").await?;
                let stream = reader.into_inner().unsplit(write);
                let acceptor = starttls.expect("offered");
                let stream = acceptor.accept(stream).await?;
                *state.encrypted.lock().expect("encrypted") += 1;
                // RFC 3207: the session starts over, EHLO first.
                return Box::pin(session(state, Box::new(stream), open, closing, false, None))
                    .await;
            }
            "HELO" => "250 fake.smtp.test".into(),
            "MAIL" if upper.starts_with("MAIL FROM:") => match path_arg(&line) {
                Some(address) => {
                    from = Some(address);
                    to.clear();
                    if !*open {
                        *open = true;
                        state.transaction_started();
                    }
                    "250 2.1.0 Ok".into()
                }
                None => "501 5.1.7 Bad sender address syntax".into(),
            },
            "RCPT" if upper.starts_with("RCPT TO:") => {
                if from.is_none() {
                    "503 5.5.1 Error: need MAIL command".into()
                } else if let Some(address) = path_arg(&line) {
                    let stall = state.rcpt_stall.lock().expect("stall").take();
                    if let Some(delay) = stall {
                        tokio::time::sleep(delay).await;
                    }
                    let scripted = state.rcpt_replies.lock().expect("replies").pop_front();
                    match scripted {
                        Some(reply) if !reply.starts_with('2') => reply,
                        _ => {
                            to.push(address);
                            "250 2.1.5 Ok".into()
                        }
                    }
                } else {
                    "501 5.1.3 Bad recipient address syntax".into()
                }
            }
            "DATA" => {
                if to.is_empty() {
                    "554 5.5.1 Error: no valid recipients".into()
                } else {
                    write
                        .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let mut lines = Vec::new();
                    loop {
                        raw.clear();
                        if reader.read_until(b'\n', &mut raw).await? == 0 {
                            return Ok(());
                        }
                        let text = String::from_utf8_lossy(&raw);
                        let text = text.strip_suffix("\r\n").unwrap_or(&text).to_owned();
                        if text == "." {
                            break;
                        }
                        // RFC 5321 4.5.2: a leading dot was doubled by the sender.
                        lines.push(text.strip_prefix('.').map(str::to_owned).unwrap_or(text));
                    }
                    let scripted = state.data_replies.lock().expect("replies").pop_front();
                    let reply = scripted.unwrap_or_else(|| {
                        queued += 1;
                        format!("250 2.0.0 Ok: queued as FAKE{queued:04}")
                    });
                    if reply.starts_with('2') {
                        state.messages.lock().expect("messages").push(Envelope {
                            from: from.take().unwrap_or_default(),
                            to: std::mem::take(&mut to),
                            data: lines.join("\r\n"),
                        });
                    }
                    from = None;
                    to.clear();
                    if std::mem::take(open) {
                        state.transaction_ended();
                    }
                    reply
                }
            }
            "RSET" => {
                from = None;
                to.clear();
                if std::mem::take(open) {
                    state.transaction_ended();
                }
                "250 2.0.0 Ok".into()
            }
            "NOOP" => "250 2.0.0 Ok".into(),
            "QUIT" => {
                write.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 Error: command not recognized".into(),
        };
        // One write per reply, like a real server: two small writes would
        // meet Nagle's algorithm and the client's delayed ACK (40 ms each).
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
}
