//! The per-pod VM shim: a standard crius shim (`info`, `check-ready`,
//! `serve`; see `crius_shim_api::shim`) whose handler is
//! [`crius_handler_kata::shim::PodShim`].
//!
//! `serve` runs in its own process group and keeps the VM running when the
//! daemon restarts. It exits after the pod's RemoveSandbox or on SIGTERM;
//! the VM's processes die with it.

use std::process::ExitCode;

use crius_handler_kata::shim::PodShim;
use crius_shim_api::shim::{ShimOptions, serve_shim_with};

fn main() -> ExitCode {
    // Logs go to stderr: stdout carries the answers of one-shot commands.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // Single-threaded on purpose: the VM's processes die with the thread
    // that started them (PR_SET_PDEATHSIG), so that thread must be the
    // process's main thread.
    serve_shim_with(
        ShimOptions {
            current_thread: true,
        },
        env!("CARGO_PKG_VERSION"),
        PodShim::from_params,
    )
}
