//! SMTP sessions to one relay, opened and kept here rather than by lettre's
//! pool, for two reasons:
//! - lettre (0.11.23) leaves Nagle's algorithm on, and writes the end-of-data
//!   marker `\r\n.\r\n` as a write of its own. That small write then waits for
//!   the relay's delayed ACK of the message: about 40 ms per email, whatever
//!   the relay's speed. Sessions opened here set `TCP_NODELAY` first, then
//!   hand the socket to lettre (TLS from the first byte is set up here too,
//!   since lettre would otherwise open the socket itself).
//! - lettre's pool caps the connections it keeps idle, not the sessions open
//!   at once; here one permit is one session, idle or in use.
//!
//! A session is reused, most recently used first, after a NOOP shows it is
//! still alive (as lettre does), and closed after a minute idle. After an
//! error, or a send abandoned at the deadline, it is dropped, never reused:
//! a late reply would otherwise be read as the answer to the next command.

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use lettre::{
    address::Envelope,
    transport::smtp::{
        self,
        authentication::{Credentials, DEFAULT_MECHANISMS},
        client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters},
        extension::ClientId,
    },
};
use reqwest::Url;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Semaphore,
    time::Instant,
};
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{
        self,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};

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
    pub(super) fn new(url: &str, size: u32, ca_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        Ok(Self {
            relay: Relay::from_url(url, ca_pem)?,
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
    Implicit {
        connector: TlsConnector,
        name: ServerName<'static>,
    },
}

impl Relay {
    /// `ca_pem`: certificate authorities to trust besides the system's.
    fn from_url(url: &str, ca_pem: Option<&[u8]>) -> anyhow::Result<Self> {
        const NOT_SMTP: &str = "SMTP_URL is not an smtp:// or smtps:// URL";
        let url = Url::parse(url).context(NOT_SMTP)?;
        let host = url.host_str().context(NOT_SMTP)?.to_owned();
        let tls_param = url
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let parameters = || -> anyhow::Result<TlsParameters> {
            let mut builder = TlsParameters::builder(host.clone());
            if let Some(pem) = ca_pem {
                builder = builder.add_root_certificate(
                    Certificate::from_pem(pem).context("SMTP_CA_FILE holds no PEM certificate")?,
                );
            }
            builder.build().context("SMTP_URL: TLS setup")
        };
        let (encryption, default_port) = match (url.scheme(), tls_param.as_deref()) {
            ("smtp", None) => (Encryption::None, 25),
            ("smtp", Some(mode @ ("required" | "opportunistic"))) => (
                Encryption::StartTls {
                    parameters: parameters()?,
                    required: mode == "required",
                },
                587,
            ),
            ("smtps", _) => (implicit_tls(&host, ca_pem)?, 465),
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
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(Failure::Connect)?;
        tcp.set_nodelay(true).map_err(Failure::Connect)?;
        let stream: Box<dyn AsyncTokioStream> = match &self.encryption {
            Encryption::Implicit { connector, name } => Box::new(TlsSocket(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(Failure::Connect)?,
            )),
            Encryption::None | Encryption::StartTls { .. } => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.hello)
            .await
            .map_err(Failure::Smtp)?;
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

/// TLS from the first byte, verified as lettre verifies STARTTLS: the
/// platform's roots plus `ca_pem`'s.
fn implicit_tls(host: &str, ca_pem: Option<&[u8]>) -> anyhow::Result<Encryption> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = match ca_pem {
        Some(pem) => CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .context("SMTP_CA_FILE holds no PEM certificate")?,
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())
            .context("SMTP_URL: TLS setup")?;
    // `dangerous` only names the door for a verifier of one's own; this one
    // is the platform's.
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("SMTP_URL: TLS setup")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Encryption::Implicit {
        connector: TlsConnector::from(Arc::new(config)),
        name: ServerName::try_from(host.to_owned())
            .context("SMTP_URL: the host is not a name TLS can verify")?,
    })
}

/// A TLS socket lettre can run a session over.
#[derive(Debug)]
struct TlsSocket(TlsStream<TcpStream>);

impl AsyncRead for TlsSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsSocket {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_take_lettres_forms() {
        let plain = Relay::from_url("smtp://127.0.0.1:2525", None).expect("plain");
        assert!(matches!(plain.encryption, Encryption::None));
        assert_eq!((plain.host.as_str(), plain.port), ("127.0.0.1", 2525));
        assert!(plain.credentials.is_none());

        let starttls = Relay::from_url("smtp://u%40x:p%2Fw@relay.example.com?tls=required", None)
            .expect("starttls");
        assert!(matches!(
            starttls.encryption,
            Encryption::StartTls { required: true, .. }
        ));
        assert_eq!(starttls.port, 587);
        assert_eq!(
            starttls.credentials,
            Some(Credentials::new("u@x".into(), "p/w".into()))
        );

        let opportunistic = Relay::from_url("smtp://relay.example.com?tls=opportunistic", None)
            .expect("opportunistic");
        assert!(matches!(
            opportunistic.encryption,
            Encryption::StartTls {
                required: false,
                ..
            }
        ));

        let implicit =
            Relay::from_url("smtps://relay.example.com/mail.example.org", None).expect("implicit");
        assert!(matches!(implicit.encryption, Encryption::Implicit { .. }));
        assert_eq!(implicit.port, 465);
        assert_eq!(implicit.hello, ClientId::Domain("mail.example.org".into()));

        for bad in ["http://relay", "smtp://relay?tls=sometimes", "not a url"] {
            assert!(Relay::from_url(bad, None).is_err(), "{bad}");
        }
    }
}
