//! A circuit breaker per provider. A 429 or a run of server failures opens
//! it: every delivery of the channel waits (in a retry tier, without burning
//! an attempt) instead of hammering a provider that is already refusing.
//! After the open period one probe goes through (half-open); its outcome
//! closes the circuit or opens it again for twice as long.
//!
//! State is per replica: each replica learns of an outage from its own
//! calls, which takes one failure run per replica, a price paid to avoid a
//! coordination point on the hot path.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Consecutive retryable failures that open the circuit.
const FAILURE_THRESHOLD: u32 = 5;
/// First open period after a failure run; doubles on each failed probe.
const BASE_OPEN: Duration = Duration::from_secs(5);
/// Longest open period.
const MAX_OPEN: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, period: Duration },
    HalfOpen { period: Duration, probing: bool },
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permit {
    /// Go ahead.
    Go,
    /// Go ahead as the half-open probe.
    Probe,
    /// Wait at least this long.
    Wait(Duration),
}

/// One provider's circuit.
#[derive(Debug)]
pub struct Circuit {
    name: &'static str,
    state: Mutex<State>,
    /// Whether `herald_circuit_state{provider=name}` shows this circuit
    /// (not for the many circuits of one name, e.g. one per webhook endpoint).
    gauge: bool,
}

impl Circuit {
    /// A closed circuit for provider `name`.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            state: Mutex::new(State::Closed { failures: 0 }),
            gauge: true,
        }
    }

    /// A closed circuit, one of many named `name`: it counts its openings in
    /// `herald_circuit_opened_total{provider=name}` but sets no state gauge.
    pub fn one_of_many(name: &'static str) -> Self {
        Self {
            gauge: false,
            ..Self::new(name)
        }
    }

    /// Asks to make a call: a pass, or how long to wait first. The pass of
    /// the half-open probe gives the probe back when it is dropped without
    /// an outcome (an early return, an error before the call, a panic), so
    /// the circuit can never stay "probing" for ever.
    pub fn pass(self: &Arc<Self>) -> Result<Pass, Duration> {
        match self.permit() {
            Permit::Go => Ok(Pass {
                circuit: self.clone(),
                probe: false,
            }),
            Permit::Probe => Ok(Pass {
                circuit: self.clone(),
                probe: true,
            }),
            Permit::Wait(wait) => Err(wait),
        }
    }

    /// The provider this circuit guards.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn permit(&self) -> Permit {
        let mut state = self.state.lock().expect("not poisoned");
        match *state {
            State::Closed { .. } => Permit::Go,
            State::Open { until, period } => {
                let now = Instant::now();
                if now >= until {
                    *state = State::HalfOpen {
                        period,
                        probing: true,
                    };
                    self.gauge(1.0);
                    Permit::Probe
                } else {
                    Permit::Wait(until - now)
                }
            }
            State::HalfOpen { probing: true, .. } => Permit::Wait(Duration::from_secs(1)),
            State::HalfOpen {
                period,
                probing: false,
            } => {
                *state = State::HalfOpen {
                    period,
                    probing: true,
                };
                Permit::Probe
            }
        }
    }

    /// Records a success: closes the circuit.
    fn success(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        if !matches!(*state, State::Closed { failures: 0 }) {
            if !matches!(*state, State::Closed { .. }) {
                tracing::info!(provider = self.name, "circuit closed");
            }
            *state = State::Closed { failures: 0 };
            self.gauge(0.0);
        }
    }

    /// Records a throttle (429): opens at once for `retry_after` (or the base period).
    fn throttled(&self, retry_after: Option<Duration>) {
        let period = retry_after
            .unwrap_or(BASE_OPEN)
            .clamp(Duration::from_secs(1), MAX_OPEN);
        self.open(period);
    }

    /// Records a retryable failure (5xx, timeout, connection): opens after a
    /// run of them, or again at once if it was the half-open probe.
    fn failure(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        match *state {
            State::Closed { failures } if failures + 1 >= FAILURE_THRESHOLD => {
                drop(state);
                self.open(BASE_OPEN);
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                }
            }
            State::HalfOpen { period, .. } => {
                drop(state);
                self.open((period * 2).min(MAX_OPEN));
            }
            State::Open { .. } => {}
        }
    }

    /// Releases a probe that ended neither in success nor failure.
    fn abandon_probe(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        if let State::HalfOpen { period, .. } = *state {
            *state = State::HalfOpen {
                period,
                probing: false,
            };
        }
    }

    fn open(&self, period: Duration) {
        let mut state = self.state.lock().expect("not poisoned");
        *state = State::Open {
            until: Instant::now() + period,
            period,
        };
        tracing::warn!(
            provider = self.name,
            open_ms = period.as_millis() as u64,
            "circuit opened"
        );
        metrics::counter!("herald_circuit_opened_total", "provider" => self.name).increment(1);
        self.gauge(2.0);
    }

    fn gauge(&self, value: f64) {
        if !self.gauge {
            return;
        }
        // 0 closed, 1 half-open, 2 open.
        metrics::gauge!("herald_circuit_state", "provider" => self.name).set(value);
    }
}

/// Leave to make one call through a circuit. Report how the call went with
/// [`Pass::success`], [`Pass::failure`] or [`Pass::throttled`]; a pass
/// dropped without an outcome says nothing about the provider.
#[derive(Debug)]
pub struct Pass {
    circuit: Arc<Circuit>,
    probe: bool,
}

impl Pass {
    /// The provider answered (sent, or refused the message for good).
    pub fn success(self) {
        self.circuit.success();
        self.settled();
    }

    /// The call failed in a way that counts against the provider.
    pub fn failure(self) {
        self.circuit.failure();
        self.settled();
    }

    /// The provider throttled the call.
    pub fn throttled(self, retry_after: Option<Duration>) {
        self.circuit.throttled(retry_after);
        self.settled();
    }

    /// Whether this is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    fn settled(mut self) {
        // The outcome moved the circuit on; nothing to give back.
        self.probe = false;
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if self.probe {
            self.circuit.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_a_run_and_probes_once() {
        let c = Circuit::new("t");
        for _ in 0..4 {
            c.failure();
            assert_eq!(c.permit(), Permit::Go);
        }
        c.failure();
        assert!(matches!(c.permit(), Permit::Wait(_)));
        // Pretend the period passed.
        *c.state.lock().unwrap() = State::Open {
            until: Instant::now(),
            period: BASE_OPEN,
        };
        assert_eq!(c.permit(), Permit::Probe);
        assert!(matches!(c.permit(), Permit::Wait(_)), "one probe at a time");
        c.failure();
        match *c.state.lock().unwrap() {
            State::Open { period, .. } => assert_eq!(period, BASE_OPEN * 2),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn a_probe_dropped_without_an_outcome_is_given_back() {
        let c = Arc::new(Circuit::new("t"));
        c.throttled(Some(Duration::from_secs(1)));
        *c.state.lock().unwrap() = State::Open {
            until: Instant::now(),
            period: BASE_OPEN,
        };
        let probe = c.pass().expect("the probe");
        assert!(probe.is_probe());
        assert!(c.pass().is_err(), "one probe at a time");
        // The claim before the call failed (`?`), or the handler panicked.
        drop(probe);
        let again = c.pass().expect("the probe was given back");
        assert!(again.is_probe());
        again.success();
        let go = c.pass().expect("closed");
        assert!(!go.is_probe());
    }

    #[test]
    fn throttle_opens_at_once_and_success_closes() {
        let c = Circuit::new("t");
        c.throttled(Some(Duration::from_secs(3)));
        let Permit::Wait(w) = c.permit() else {
            panic!()
        };
        assert!(w > Duration::from_secs(2) && w <= Duration::from_secs(3));
        c.success();
        assert_eq!(c.permit(), Permit::Go);
    }
}
