//! Connections the hot writers keep between their statements.
//!
//! A statement run on the pool pays two round trips besides its own: the
//! pool pings a connection when it hands it out (unless told not to) and
//! again when it takes it back, with `Sync` and a wait for
//! `ReadyForQuery` each time: two of the three round trips of each claim
//! or outcome statement of the workers, and a third of ingest's at
//! moderate load (docs/benchmarks.md, "Round trips"). A writer takes a
//! connection from a [`Kept`], runs its statements, and keeps it for the
//! next batch when they succeeded; after a failure the connection goes
//! back to the pool, which tests it and closes it when it is broken, and
//! so do the other connections kept with it, since the failure may be the
//! database's.

use std::{
    ops::{Deref, DerefMut},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection, PgPool, Postgres, pool::PoolConnection};

/// A connection unused this long is pinged before it is used again, as the
/// pool does before handing out one idle for as long (see
/// [`super::connect_lazy_with`]).
pub const IDLE_PING: Duration = Duration::from_secs(5);

type Idle = Vec<(PoolConnection<Postgres>, Instant)>;

/// Connections from one pool, kept by the writers that share it. Cheap to
/// clone. Every connection it keeps still counts against the pool's size,
/// so the writers sharing a [`Kept`] should be the pool's only users, or
/// few enough that the connections kept do not starve the others.
#[derive(Clone)]
pub struct Kept {
    pool: PgPool,
    idle: Arc<Mutex<Idle>>,
}

impl Kept {
    /// Keeps connections taken from `pool`. Must be called on a Tokio
    /// runtime: closing the pool waits for every connection to come back,
    /// so a task gives the kept ones back as soon as the pool begins to
    /// close.
    pub fn new(pool: PgPool) -> Self {
        let idle: Arc<Mutex<Idle>> = Arc::default();
        let closing = pool.close_event();
        let kept = Arc::downgrade(&idle);
        tokio::spawn(async move {
            closing.await;
            if let Some(idle) = kept.upgrade() {
                let given_back = std::mem::take(&mut *idle.lock().expect("kept connections"));
                drop(given_back);
            }
        });
        Self { pool, idle }
    }

    /// The pool the connections come from.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A kept connection, or one from the pool when none is kept. One kept
    /// idle for [`IDLE_PING`] or longer is pinged first, and given back to
    /// the pool when the ping fails.
    pub async fn take(&self) -> Result<Lease, sqlx::Error> {
        loop {
            let popped = self.idle.lock().expect("kept connections").pop();
            let Some((mut conn, since)) = popped else {
                let conn = self.pool.acquire().await?;
                return Ok(self.lease(conn));
            };
            if since.elapsed() < IDLE_PING || conn.ping().await.is_ok() {
                return Ok(self.lease(conn));
            }
        }
    }

    fn lease(&self, conn: PoolConnection<Postgres>) -> Lease {
        Lease {
            conn: Some(conn),
            home: self.clone(),
        }
    }

    /// How many connections are kept idle now.
    pub fn idle(&self) -> usize {
        self.idle.lock().expect("kept connections").len()
    }
}

/// A connection taken from a [`Kept`]. [`Lease::keep`] puts it back for
/// the next statement; dropped without it (a statement failed), it goes
/// back to the pool, and the connections kept idle with it as well.
pub struct Lease {
    conn: Option<PoolConnection<Postgres>>,
    home: Kept,
}

impl Lease {
    /// Keeps the connection for the writers' next statements, unless the
    /// pool is closing (then it goes back to the pool).
    pub fn keep(mut self) {
        if self.home.pool.is_closed() {
            return;
        }
        if let Some(conn) = self.conn.take() {
            self.home
                .idle
                .lock()
                .expect("kept connections")
                .push((conn, Instant::now()));
        }
    }
}

impl Deref for Lease {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("a lease holds its connection")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("a lease holds its connection")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.is_some() && !self.home.pool.is_closed() {
            // Not kept: a statement failed, perhaps because the database
            // went away. Every idle connection goes back to the pool too,
            // which pings each and closes those that are broken, instead
            // of each failing a batch of its own later.
            let idle = std::mem::take(&mut *self.home.idle.lock().expect("kept connections"));
            drop(idle);
        }
    }
}
