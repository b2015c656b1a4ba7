//! Failed attempts per client (wrong API keys, wrong admin keys), so that a
//! client guessing keys is slowed down without locking anyone else out.
//!
//! Each client has a bucket of failures it may make: `burst` at first,
//! refilled at `per_sec`. A client with an empty bucket is refused until a
//! failure's worth has refilled; successes cost nothing. Memory is bounded:
//! at most `capacity` clients are tracked, clients whose bucket is full again
//! are forgotten by [`FailedAttempts::prune`], and a new client arriving at
//! the cap takes the place of a least-failing one (so a flood from many
//! addresses cannot grow the table, and an evicted attacker gains at most a
//! fresh burst).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::client::ClientIp;

/// A bucket of failures one client may still make.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures left, refilled continuously up to the burst.
    left: f64,
    at: Instant,
}

/// Failed attempts per client, with bounded memory.
#[derive(Debug)]
pub struct FailedAttempts {
    burst: f64,
    per_sec: f64,
    capacity: usize,
    clients: Mutex<HashMap<ClientIp, Bucket>>,
}

impl FailedAttempts {
    /// Allows each client `burst` failures, refilled at `per_sec`, tracking
    /// at most `capacity` clients.
    pub fn new(burst: u32, per_sec: f64, capacity: usize) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_sec: per_sec.max(f64::MIN_POSITIVE),
            capacity: capacity.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.left + elapsed * self.per_sec).min(self.burst)
    }

    fn wait_for_one(&self, left: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - left) / self.per_sec).max(0.0))
    }

    /// `Err(wait)` while `client` has used up its failures; then it is
    /// refused without its attempt being looked at.
    pub fn check(&self, client: ClientIp) -> Result<(), Duration> {
        let now = Instant::now();
        let clients = self.clients.lock().expect("not poisoned");
        match clients.get(&client) {
            Some(bucket) => {
                let left = self.refilled(*bucket, now);
                if left < 1.0 {
                    Err(self.wait_for_one(left))
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Counts a failure of `client`. Returns true when this failure used up
    /// its bucket (worth one log line, not one per refused attempt).
    pub fn record(&self, client: ClientIp) -> bool {
        let now = Instant::now();
        let mut clients = self.clients.lock().expect("not poisoned");
        if !clients.contains_key(&client) && clients.len() >= self.capacity {
            self.make_room(&mut clients, now);
        }
        let bucket = clients.entry(client).or_insert(Bucket {
            left: self.burst,
            at: now,
        });
        let left = self.refilled(*bucket, now);
        let after = (left - 1.0).max(0.0);
        *bucket = Bucket {
            left: after,
            at: now,
        };
        left >= 1.0 && after < 1.0
    }

    /// Evicts the least-failing of a few tracked clients: a sample rather
    /// than a scan, so that a flood from many addresses costs constant time
    /// per failure. A client still refused is only evicted when every one
    /// sampled is too.
    fn make_room(&self, clients: &mut HashMap<ClientIp, Bucket>, now: Instant) {
        const SAMPLE: usize = 16;
        let least = clients
            .iter()
            .take(SAMPLE)
            .max_by(|a, b| {
                self.refilled(*a.1, now)
                    .total_cmp(&self.refilled(*b.1, now))
            })
            .map(|(c, _)| *c);
        if let Some(least) = least {
            clients.remove(&least);
        }
    }

    /// Forgets clients whose bucket is full again; run periodically.
    pub fn prune(&self) {
        let now = Instant::now();
        self.clients
            .lock()
            .expect("not poisoned")
            .retain(|_, b| self.refilled(*b, now) < self.burst);
    }

    /// Clients tracked now.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.clients.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn client(n: u32) -> ClientIp {
        ClientIp::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)))
    }

    #[test]
    fn a_client_is_refused_after_its_burst_and_others_are_not() {
        let attempts = FailedAttempts::new(3, 0.001, 100);
        for _ in 0..2 {
            assert!(!attempts.record(client(1)));
            assert!(attempts.check(client(1)).is_ok());
        }
        assert!(attempts.record(client(1)), "the third failure uses it up");
        let wait = attempts.check(client(1)).unwrap_err();
        assert!(wait > Duration::from_secs(100), "{wait:?}");
        assert!(
            attempts.check(client(2)).is_ok(),
            "another client is unaffected"
        );
    }

    #[test]
    fn failures_refill_over_time() {
        let attempts = FailedAttempts::new(1, 1000.0, 100);
        attempts.record(client(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(attempts.check(client(1)).is_ok());
        attempts.prune();
        assert_eq!(attempts.tracked(), 0, "a full bucket is forgotten");
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_from_many_addresses() {
        let attempts = FailedAttempts::new(2, 0.001, 50);
        // The attacker at client 0 fails twice; a flood of single failures
        // from 10,000 other addresses follows.
        attempts.record(client(0));
        attempts.record(client(0));
        for n in 1..=10_000 {
            attempts.record(client(n));
            assert!(attempts.tracked() <= 50);
        }
        assert!(
            attempts.check(client(0)).is_err(),
            "the most-failing client is the last to be evicted"
        );
    }
}
