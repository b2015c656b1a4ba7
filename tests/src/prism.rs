//! Prism, serving a provider's published OpenAPI spec as a mock on loopback:
//! a peer that validates our requests against the provider's own contract,
//! written by nobody on this team.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::{
    net::TcpStream,
    process::{Child, Command},
};

/// The Prism binary `scripts/install-test-tools` installs.
pub fn prism_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/prism/node_modules/.bin/prism")
}

/// A published spec kept in the repository under `tests/specs` (with its
/// licence), so a fresh clone tests against it without a network.
pub fn spec(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("specs")
        .join(relative)
}

/// A running `prism mock --errors`, stopped when dropped.
pub struct Prism {
    port: u16,
    _child: Child,
}

impl Prism {
    /// Serves `spec` on a free loopback port and waits until it listens.
    /// Fails the test, saying how to install it, when Prism is missing.
    pub async fn start(spec: PathBuf) -> Self {
        let binary = prism_binary();
        assert!(
            binary.exists(),
            "Prism is not installed at {}: run scripts/install-test-tools",
            binary.display()
        );
        assert!(spec.exists(), "spec {} is missing", spec.display());
        let port = crate::fakes::closed_port().await;
        let child = Command::new(&binary)
            .args(["mock", "--errors", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prism");
        let prism = Self {
            port,
            _child: child,
        };
        // Loading a 2 MB spec takes Prism a few seconds, more on a busy machine.
        for _ in 0..600 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return prism;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("prism did not listen on port {port} within 60 s");
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
