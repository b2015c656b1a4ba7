//! The async runtime a binary runs on, by `RUNTIME_THREADS`.
//!
//! Ingest runs every task on one thread by default: no work stealing and no
//! wake-ups across threads. On the reference machine, where the database,
//! the broker and the pipeline share two cores, that cut ingest's CPU per
//! notification by about a sixth against tokio's multi-threaded scheduler,
//! and its commit-and-confirm latency with it (docs/benchmarks.md, "One
//! runtime thread"). A pod asks for one CPU and more throughput is more
//! replicas (k8s/), so one thread loses nothing there.
//!
//! The router and the workers keep the multi-threaded scheduler by default.
//! On one thread the push worker's CPU fell by a fifth too, but a `high`
//! message then waited behind the tasks of a draining `bulk` topic on the
//! one scheduler: routed-to-claimed p50 of one-time codes went from 1-3 ms
//! to 6-12 ms. `RUNTIME_THREADS=1` makes that trade for a deployment that
//! wants it.

use std::future::Future;

/// `RUNTIME_THREADS`: the async runtime's threads, `1` for one thread that
/// runs everything, `0` for one worker thread per core; unset, the
/// binary's own default.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct RuntimeConfig {
    /// Threads of the async runtime: 1 runs every task on one thread, N on
    /// N worker threads, 0 on one per core. Default: 1 for ingest, 0 for
    /// the router and the workers.
    #[arg(long, env = "RUNTIME_THREADS")]
    pub runtime_threads: Option<usize>,
}

impl RuntimeConfig {
    /// The threads to run: `RUNTIME_THREADS`, or the binary's `default`.
    pub fn threads(&self, default: usize) -> usize {
        self.runtime_threads.unwrap_or(default)
    }

    /// Builds the runtime of [`Self::threads`].
    pub fn build(&self, default: usize) -> std::io::Result<tokio::runtime::Runtime> {
        match self.threads(default) {
            1 => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            0 => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
            n => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .enable_all()
                .build(),
        }
    }

    /// Runs `main` to completion on a runtime built by [`Self::build`].
    pub fn block_on<F: Future>(self, default: usize, main: F) -> anyhow::Result<F::Output> {
        Ok(self.build(default)?.block_on(main))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flavor(threads: Option<usize>, default: usize) -> tokio::runtime::RuntimeFlavor {
        RuntimeConfig {
            runtime_threads: threads,
        }
        .build(default)
        .unwrap()
        .handle()
        .runtime_flavor()
    }

    #[test]
    fn one_thread_is_the_current_thread_scheduler_and_more_the_multi_threaded_one() {
        use tokio::runtime::RuntimeFlavor::{CurrentThread, MultiThread};
        assert_eq!(flavor(Some(1), 0), CurrentThread);
        assert_eq!(flavor(Some(0), 1), MultiThread);
        assert_eq!(flavor(Some(3), 1), MultiThread);
        assert_eq!(flavor(None, 1), CurrentThread, "the binary's default");
        assert_eq!(flavor(None, 0), MultiThread, "the binary's default");
        let workers = RuntimeConfig {
            runtime_threads: Some(3),
        }
        .block_on(1, async {
            tokio::runtime::Handle::current().metrics().num_workers()
        })
        .unwrap();
        assert_eq!(workers, 3);
    }

    #[test]
    fn the_setting_is_read_from_the_flag_or_the_environment_name() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            runtime: RuntimeConfig,
        }
        let cli = Cli::try_parse_from(["bin"]).unwrap();
        assert_eq!(cli.runtime.threads(1), 1);
        assert_eq!(cli.runtime.threads(0), 0);
        let cli = Cli::try_parse_from(["bin", "--runtime-threads", "4"]).unwrap();
        assert_eq!(cli.runtime.threads(1), 4);
        assert!(Cli::try_parse_from(["bin", "--runtime-threads", "two"]).is_err());
    }
}
