//! The `hello` handler as an out-of-process shim (`plugin: {mode: process}`).

fn main() -> std::process::ExitCode {
    crius_shim_api::shim::serve_shim(env!("CARGO_PKG_VERSION"), handler_hello::HelloHandler::new)
}
