//! The point of no return of an accept: from here on the notification may
//! be kept whatever the caller does, so a caller that gives up waiting (the
//! API's request timeout) must not answer "not accepted".

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// Set by the intake just before it commits; read by whoever would abandon
/// the accept. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Commitment(Arc<AtomicBool>);

impl Commitment {
    /// Marks the commit as begun.
    pub fn begin(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether the commit has begun: the outcome is no longer "nothing kept".
    pub fn begun(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
