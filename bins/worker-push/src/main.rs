//! `worker-push`: delivers the push channel's queues through its provider.

/// mimalloc rather than the system allocator: the request and message
/// paths allocate and free many small values across threads, and glibc's
/// malloc spent about a third of ingest's CPU on it (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    herald::delivery::main(herald::model::Channel::Push)
}
