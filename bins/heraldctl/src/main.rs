//! `heraldctl`: Herald's operator CLI.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    herald::ctl::main().await
}
