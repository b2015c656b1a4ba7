//! The broker's addresses: `AMQP_URL` may name several nodes of one RabbitMQ
//! cluster, comma-separated, and a (re)connect tries them in turn, starting
//! after the one that failed last, so a process whose node died reconnects
//! to a live one instead of waiting for the dead one to return.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The schemes an address starts with; a comma not followed by one of them
/// belongs to the URL before it (a comma is legal, unescaped, in a
/// password or a query value).
const SCHEMES: [&str; 2] = ["amqp://", "amqps://"];

/// Splits `AMQP_URL` into its addresses: `amqp://a/%2f,amqp://b/%2f` is two,
/// `amqp://a/%2f` one. Whitespace around each address is ignored. Errors on
/// an empty list or an address that is not an `amqp://` or `amqps://` URL.
pub fn parse(list: &str) -> Result<Vec<String>, String> {
    let mut urls: Vec<String> = Vec::new();
    for part in list.split(',') {
        let trimmed = part.trim();
        let starts_url = SCHEMES.iter().any(|s| trimmed.starts_with(s));
        match urls.last_mut() {
            Some(last) if !starts_url && !trimmed.is_empty() => {
                last.push(',');
                last.push_str(part.trim_end());
            }
            _ if trimmed.is_empty() => {}
            _ if starts_url => urls.push(trimmed.to_owned()),
            _ => {
                return Err(format!(
                    "`{}` is not an amqp:// or amqps:// URL",
                    crate::config::redact_url(trimmed)
                ));
            }
        }
    }
    if urls.is_empty() {
        return Err("no broker address".into());
    }
    Ok(urls)
}

/// Which address a connect tries first: the one after the address that
/// failed last (a refused connect, or a connection that was lost), so every
/// replica of a process moves off a dead node and none keeps knocking on it
/// first.
#[derive(Debug, Default)]
pub struct Rotation {
    next: AtomicUsize,
}

impl Rotation {
    /// The order in which to try `len` addresses now: every index once,
    /// starting at the one after the last failure (0 before any).
    pub fn order(&self, len: usize) -> Vec<usize> {
        let start = self.next.load(Ordering::Acquire) % len.max(1);
        (0..len).map(|i| (start + i) % len).collect()
    }

    /// Records that address `index` (of `len`) failed: the next connect
    /// starts after it.
    pub fn failed(&self, index: usize, len: usize) {
        self.next.store((index + 1) % len.max(1), Ordering::Release);
    }

    /// Records that address `index` was connected to: the next connect
    /// starts there again unless it is reported failed meanwhile.
    pub fn connected(&self, index: usize) {
        self.next.store(index, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_one_address() {
        assert_eq!(
            parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap(),
            ["amqp://guest:guest@127.0.0.1:5672/%2f"]
        );
    }

    #[test]
    fn a_list_is_split_on_commas_that_start_a_url() {
        assert_eq!(
            parse(" amqp://u:p@mq-0:5672/%2f, amqps://u:p@mq-1:5671/%2f ,amqp://u:p@mq-2/%2f?heartbeat=5")
                .unwrap(),
            [
                "amqp://u:p@mq-0:5672/%2f",
                "amqps://u:p@mq-1:5671/%2f",
                "amqp://u:p@mq-2/%2f?heartbeat=5"
            ]
        );
        // A comma inside a password or a query value stays in its URL.
        assert_eq!(
            parse("amqp://u:pa,ss@mq-0/%2f,amqp://u:p@mq-1/%2f?x=a,b").unwrap(),
            ["amqp://u:pa,ss@mq-0/%2f", "amqp://u:p@mq-1/%2f?x=a,b"]
        );
        // A trailing comma is no address.
        assert_eq!(parse("amqp://a/%2f,").unwrap(), ["amqp://a/%2f"]);
    }

    #[test]
    fn refuses_an_empty_list_and_what_is_not_an_amqp_url() {
        assert!(parse("").is_err());
        assert!(parse(" , ").is_err());
        let err = parse("mq-0:5672").unwrap_err();
        assert!(err.contains("mq-0:5672"), "{err}");
        // The password of a bad address is not echoed.
        let err = parse("http://u:secret@mq-0/").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    fn order(r: &Rotation, len: usize) -> Vec<usize> {
        r.order(len)
    }

    #[test]
    fn tries_every_address_once_starting_after_the_last_failure() {
        let r = Rotation::default();
        assert_eq!(order(&r, 3), [0, 1, 2]);
        r.failed(0, 3);
        assert_eq!(order(&r, 3), [1, 2, 0]);
        r.failed(2, 3);
        assert_eq!(order(&r, 3), [0, 1, 2]);
        // Connected to 1: it stays first until it fails.
        r.connected(1);
        assert_eq!(order(&r, 3), [1, 2, 0]);
        r.failed(1, 3);
        assert_eq!(order(&r, 3), [2, 0, 1]);
    }

    #[test]
    fn one_address_is_always_tried() {
        let r = Rotation::default();
        assert_eq!(order(&r, 1), [0]);
        r.failed(0, 1);
        assert_eq!(order(&r, 1), [0]);
    }
}
