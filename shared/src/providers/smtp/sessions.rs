//! SMTP sessions to one relay, opened and kept here rather than by lettre's
//! pool, for two reasons:
//! - lettre (0.11.23) leaves Nagle's algorithm on, and writes the end-of-data
//!   marker `\r\n.\r\n` as a write of its own. That small write then waits for
//!   the relay's delayed ACK of the message: about 40 ms per email, whatever
//!   the relay's speed. Sessions opened here set `TCP_NODELAY` first.
//! - lettre's pool caps the connections it keeps idle, not the sessions open
//!   at once; here one permit is one session, idle or in use.
//!
//! A session is reused, most recently used first, after a NOOP shows it is
//! still alive (as lettre does), and closed after a minute idle. After an
//! error, or a send abandoned at the deadline, it is dropped, never reused:
//! a late reply would otherwise be read as the answer to the next command.

use std::{collections::VecDeque, sync::Mutex, time::Duration};

use anyhow::Context as _;
use lettre::{
    address::Envelope,
    transport::smtp::{
        self,
        authentication::{Credentials, DEFAULT_MECHANISMS},
        client::{AsyncSmtpConnection, TlsParameters},
        extension::ClientId,
    },
};
use reqwest::Url;
use tokio::{net::TcpStream, sync::Semaphore, time::Instant};

/// Idle sessions are closed after this long, before most relays' own limit.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a send did not get a `2xx` after its message.
#[derive(Debug)]
pub(super) enum Failure {
    /// Every session stayed busy until the deadline.
    Busy,
    /// The relay could not be reached (refused, unreachable, reset).
    Connect(std::io::Error),
    /// The relay answered with an error, or the session broke mid-way.
    Smtp(smtp::Error),
    /// The session did not finish by the deadline.
    Timeout,
}

/// At most `size` sessions to the relay, idle ones kept for reuse.
pub(super) struct Sessions {
    relay: Relay,
    permits: Semaphore,
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

impl Sessions {
    pub(super) fn new(url: &str, size: u32) -> anyhow::Result<Self> {
        Ok(Self {
            relay: Relay::from_url(url)?,
            permits: Semaphore::new(size.max(1) as usize),
            idle: Mutex::new(VecDeque::new()),
        })
    }

    /// Sends one message. Waiting for a session counts against `timeout`
    /// too: it bounds the whole send as the caller sees it.
    pub(super) async fn send(
        &self,
        envelope: &Envelope,
        message: &[u8],
        timeout: Duration,
    ) -> Result<(), Failure> {
        let deadline = Instant::now() + timeout;
        let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, self.permits.acquire()).await
        else {
            return Err(Failure::Busy);
        };
        // Dropping this future at the deadline drops the session with it.
        tokio::time::timeout_at(deadline, async {
            let mut conn = self.checkout().await?;
            let sent = conn.send(envelope, message).await;
            if !conn.has_broken() {
                self.checkin(conn);
            }
            sent.map(drop).map_err(Failure::Smtp)
        })
        .await
        .unwrap_or(Err(Failure::Timeout))
    }

    /// A live session: an idle one that answers NOOP, or a new one.
    async fn checkout(&self) -> Result<AsyncSmtpConnection, Failure> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_back();
            match idle {
                Some(Idle { mut conn, since }) => {
                    if since.elapsed() < IDLE_TIMEOUT && conn.test_connected().await {
                        return Ok(conn);
                    }
                }
                None => return self.relay.connect().await,
            }
        }
    }

    fn checkin(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The least recently used are at the front; close those idle too long.
        while idle
            .front()
            .is_some_and(|s| s.since.elapsed() >= IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

/// Where and how to open a session, from `SMTP_URL` (the forms lettre's
/// `from_url` takes, see the provider's module).
struct Relay {
    host: String,
    port: u16,
    encryption: Encryption,
    hello: ClientId,
    credentials: Option<Credentials>,
}

enum Encryption {
    None,
    /// STARTTLS after the greeting; `required` refuses a relay without it.
    StartTls {
        parameters: TlsParameters,
        required: bool,
    },
    /// TLS from the first byte (`smtps://`).
    Implicit(TlsParameters),
}

impl Relay {
    fn from_url(url: &str) -> anyhow::Result<Self> {
        const NOT_SMTP: &str = "SMTP_URL is not an smtp:// or smtps:// URL";
        let url = Url::parse(url).context(NOT_SMTP)?;
        let host = url.host_str().context(NOT_SMTP)?.to_owned();
        let tls_param = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let parameters = || TlsParameters::new(host.clone()).context("SMTP_URL: TLS setup");
        let (encryption, default_port) = match (url.scheme(), tls_param.as_deref()) {
            ("smtp", None) => (Encryption::None, 25),
            ("smtp", Some(mode @ ("required" | "opportunistic"))) => (
                Encryption::StartTls {
                    parameters: parameters()?,
                    required: mode == "required",
                },
                587,
            ),
            ("smtps", _) => (Encryption::Implicit(parameters()?), 465),
            (scheme, tls) => anyhow::bail!(
                "{NOT_SMTP}: scheme `{scheme}`, tls `{}` (use smtp://, \
                 smtp://...?tls=required, or smtps://)",
                tls.unwrap_or("")
            ),
        };
        let hello = match url.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_owned()),
        };
        let decode = |s: &str| -> anyhow::Result<String> {
            Ok(percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .context("SMTP_URL: credentials are not UTF-8")?
                .into_owned())
        };
        let credentials = match url.password() {
            Some(password) => Some(Credentials::new(decode(url.username())?, decode(password)?)),
            None => None,
        };
        Ok(Self {
            port: url.port().unwrap_or(default_port),
            host,
            encryption,
            hello,
            credentials,
        })
    }

    /// Greeting, EHLO, STARTTLS and AUTH as configured.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
        let mut conn = match &self.encryption {
            // TLS from the first byte goes through lettre's own connect,
            // which does not set TCP_NODELAY (fixed upstream, unreleased).
            Encryption::Implicit(parameters) => AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                None,
                &self.hello,
                Some(parameters.clone()),
                None,
            )
            .await
            .map_err(Failure::Smtp)?,
            Encryption::None | Encryption::StartTls { .. } => {
                let stream = TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .map_err(Failure::Connect)?;
                stream.set_nodelay(true).map_err(Failure::Connect)?;
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                    .await
                    .map_err(Failure::Smtp)?
            }
        };
        if let Encryption::StartTls {
            parameters,
            required,
        } = &self.encryption
            && (*required || conn.can_starttls())
        {
            conn.starttls(parameters.clone(), &self.hello)
                .await
                .map_err(Failure::Smtp)?;
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials)
                .await
                .map_err(Failure::Smtp)?;
        }
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_lettres_forms() {
        let plain = Relay::from_url("smtp://127.0.0.1:2525").expect("plain");
        assert!(matches!(plain.encryption, Encryption::None));
        assert_eq!((plain.host.as_str(), plain.port), ("127.0.0.1", 2525));
        assert!(plain.credentials.is_none());

        let starttls =
            Relay::from_url("smtp://u%40x:p%2Fw@relay.example.com?tls=required").expect("starttls");
        assert!(matches!(
            starttls.encryption,
            Encryption::StartTls { required: true, .. }
        ));
        assert_eq!(starttls.port, 587);
        assert_eq!(
            starttls.credentials,
            Some(Credentials::new("u@x".into(), "p/w".into()))
        );

        let opportunistic =
            Relay::from_url("smtp://relay.example.com?tls=opportunistic").expect("opportunistic");
        assert!(matches!(
            opportunistic.encryption,
            Encryption::StartTls {
                required: false,
                ..
            }
        ));

        let implicit =
            Relay::from_url("smtps://relay.example.com/mail.example.org").expect("implicit");
        assert!(matches!(implicit.encryption, Encryption::Implicit(_)));
        assert_eq!(implicit.port, 465);
        assert_eq!(implicit.hello, ClientId::Domain("mail.example.org".into()));

        for bad in ["http://relay", "smtp://relay?tls=sometimes", "not a url"] {
            assert!(Relay::from_url(bad).is_err(), "{bad}");
        }
    }
}
