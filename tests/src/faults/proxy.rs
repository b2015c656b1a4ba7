//! A loopback TCP proxy that injects network faults between a Herald
//! process and one of its dependencies (point `AMQP_URL` or `DATABASE_URL`
//! at [`TcpProxy::addr`]).
//!
//! The faults are the ones that behave differently from a clean stop of the
//! peer:
//! - [`TcpProxy::cut`]: every open connection is reset at once and new ones
//!   are reset on accept, as when a link or a NAT entry dies;
//! - [`TcpProxy::blackhole`]: connections stay open but nothing moves
//!   either way, as with a hung peer or a partition (TCP sees no error, so
//!   only the application's own timeouts and heartbeats notice);
//! - [`TcpProxy::delay`]: every chunk waits before being forwarded, in both
//!   directions.
//!
//! [`TcpProxy::restore`] ends a cut or a blackhole; bytes held during a
//! blackhole then flow, as TCP retransmission would deliver them after a
//! partition heals.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

/// What the proxy does with traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything (after the configured delay).
    Pass,
    /// Reset every connection.
    Cut,
    /// Hold everything.
    Blackhole,
}

/// Connection counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections reset by a cut (open ones and those refused during it).
    pub reset: u64,
    /// Bytes forwarded client to upstream.
    pub bytes_up: u64,
    /// Bytes forwarded upstream to client.
    pub bytes_down: u64,
}

#[derive(Default)]
struct Stats {
    accepted: AtomicU64,
    open: AtomicU64,
    reset: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

struct Shared {
    /// Where new connections go; [`TcpProxy::retarget`] moves it.
    upstream: Mutex<SocketAddr>,
    mode: watch::Sender<Mode>,
    delay: Mutex<Duration>,
    /// Cancelled by a cut: every connection task of the current generation
    /// watches it. A cut swaps in a fresh token for later connections.
    generation: Mutex<CancellationToken>,
    stats: Stats,
}

/// The proxy. Stops accepting and drops every connection when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Starts a proxy on a fresh loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            mode: watch::Sender::new(Mode::Pass),
            delay: Mutex::new(Duration::ZERO),
            generation: Mutex::new(CancellationToken::new()),
            stats: Stats::default(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Self { addr, shared, stop }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxied address.
    pub fn upstream(&self) -> SocketAddr {
        *self.shared.upstream.lock().expect("upstream")
    }

    /// Sends new connections to `upstream` and resets the open ones, as a
    /// Service address moving to another pod (CloudNativePG's `-rw`
    /// Service after a failover): clients reconnect to the new target
    /// without a change of their own configuration.
    pub fn retarget(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().expect("upstream") = upstream;
        let old = std::mem::take(&mut *self.shared.generation.lock().expect("generation"));
        old.cancel();
    }

    /// Resets every open connection and every new one until
    /// [`restore`](Self::restore).
    pub fn cut(&self) {
        self.shared.mode.send_replace(Mode::Cut);
        let old = std::mem::take(&mut *self.shared.generation.lock().expect("generation"));
        old.cancel();
    }

    /// Holds all traffic, on open and new connections, until
    /// [`restore`](Self::restore).
    pub fn blackhole(&self) {
        self.shared.mode.send_replace(Mode::Blackhole);
    }

    /// Back to forwarding.
    pub fn restore(&self) {
        self.shared.mode.send_replace(Mode::Pass);
    }

    /// Delays every chunk by `delay` in both directions (zero to stop).
    pub fn delay(&self, delay: Duration) {
        *self.shared.delay.lock().expect("delay") = delay;
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Connection and byte counters.
    pub fn counters(&self) -> Counters {
        let s = &self.shared.stats;
        Counters {
            accepted: s.accepted.load(Ordering::SeqCst),
            open: s.open.load(Ordering::SeqCst),
            reset: s.reset.load(Ordering::SeqCst),
            bytes_up: s.bytes_up.load(Ordering::SeqCst),
            bytes_down: s.bytes_down.load(Ordering::SeqCst),
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.generation.lock().expect("generation").cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (client, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(_) => {
                    // Out of file descriptors and the like: pause, go on.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        shared.stats.accepted.fetch_add(1, Ordering::SeqCst);
        if *shared.mode.borrow() == Mode::Cut {
            reset(client);
            shared.stats.reset.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let token = shared.generation.lock().expect("generation").clone();
        tokio::spawn(connection(client, shared.clone(), token));
    }
}

/// Closes with RST instead of FIN, so the peer sees a reset connection.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(client: TcpStream, shared: Arc<Shared>, cut: CancellationToken) {
    shared.stats.open.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    // A blackholed proxy accepts but does not even dial upstream yet.
    let mut mode = shared.mode.subscribe();
    let passing = tokio::select! {
        _ = cut.cancelled() => false,
        passing = async { mode.wait_for(|m| *m == Mode::Pass).await.is_ok() } => passing,
    };
    let dialled = if passing {
        let target = *shared.upstream.lock().expect("upstream");
        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target))
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let Some(upstream) = dialled else {
        if cut.is_cancelled() {
            shared.stats.reset.fetch_add(1, Ordering::SeqCst);
        }
        reset(client);
        shared.stats.open.fetch_sub(1, Ordering::SeqCst);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (up_read, up_write) = upstream.into_split();
    let up = pump(client_read, up_write, shared.clone(), true);
    let down = pump(up_read, client_write, shared.clone(), false);
    tokio::select! {
        // A cut wins over bytes that arrived in the same instant.
        biased;
        _ = cut.cancelled() => {
            shared.stats.reset.fetch_add(1, Ordering::SeqCst);
        }
        // Either side closing ends the pair; the halves drop below.
        _ = async { tokio::join!(up, down) } => {}
    }
    shared.stats.open.fetch_sub(1, Ordering::SeqCst);
}

/// Copies one direction chunk by chunk, honouring the mode and delay.
/// Returns the write half (reunited by drop order) when the reader closes.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: Arc<Shared>, up: bool) {
    let mut mode = shared.mode.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Held here while blackholed: nothing is read, so the sender's
        // window fills as it would against a hung peer.
        if mode.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let delay = *shared.delay.lock().expect("delay");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // A chunk read just before a blackhole began waits for the restore.
        if mode.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let counter = if up {
            &shared.stats.bytes_up
        } else {
            &shared.stats.bytes_down
        };
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Echoes every byte back until the peer closes.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        Ok(got)
    }

    #[tokio::test]
    async fn forwards_both_ways_and_counts() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"hello").await.unwrap(), b"hello");
        let c = proxy.counters();
        assert_eq!((c.accepted, c.open, c.reset), (1, 1, 0));
        assert_eq!((c.bytes_up, c.bytes_down), (5, 5));
    }

    #[tokio::test]
    async fn cut_resets_open_and_new_connections_until_restored() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut open, b"a").await.unwrap();
        proxy.cut();
        assert!(
            round_trip(&mut open, b"b").await.is_err(),
            "the open connection is dead"
        );
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut fresh, b"c").await.is_err(), "new ones too");
        assert_eq!(proxy.counters().reset, 2);
        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"d").await.unwrap(), b"d");
        assert_eq!(proxy.counters().open, 1);
    }

    #[tokio::test]
    async fn blackhole_holds_traffic_until_restored() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"x").await.unwrap();
        proxy.blackhole();
        s.write_all(b"held").await.unwrap();
        let mut got = [0u8; 4];
        let silent = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut got)).await;
        assert!(silent.is_err(), "nothing comes back while blackholed");
        // A new connection is accepted but not answered either.
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        fresh.write_all(b"new!").await.unwrap();
        proxy.restore();
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"held", "held bytes flow after the restore");
        tokio::time::timeout(Duration::from_secs(5), fresh.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"new!");
    }

    #[tokio::test]
    async fn delay_slows_each_direction() {
        let proxy = TcpProxy::start(echo_server().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"warm").await.unwrap();
        proxy.delay(Duration::from_millis(150));
        let started = Instant::now();
        round_trip(&mut s, b"slow").await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "150 ms up and 150 ms down: {:?}",
            started.elapsed()
        );
        proxy.delay(Duration::ZERO);
        let started = Instant::now();
        round_trip(&mut s, b"fast").await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(150));
    }

    #[tokio::test]
    async fn refused_upstream_closes_the_client() {
        let upstream = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let proxy = TcpProxy::start(upstream).await;
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut s, b"?").await.is_err());
    }
}
