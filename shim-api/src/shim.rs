//! Out-of-process handlers (feature `shim`): the contract over ttrpc on a
//! unix socket, one shim process per pod.
//!
//! A shim executable's `main` is one line:
//!
//! ```ignore
//! fn main() -> std::process::ExitCode {
//!     crius_shim_api::shim::serve_shim(env!("CARGO_PKG_VERSION"), MyHandler::new)
//! }
//! ```
//!
//! Command line (what the core runs; see `shim-api/README.md`):
//!
//! - `<exe> info --params-file <path>`: writes an encoded `InfoResponse` to
//!   stdout and exits 0.
//! - `<exe> check-ready --params-file <path>`: exits 0 when ready.
//! - `<exe> serve --socket <path> --sandbox-id <id> --params-file <path>`:
//!   serves service [`crate::wire::SERVICE`] on `<path>` until the pod's
//!   `RemoveSandbox` succeeds (or SIGTERM), then removes the socket and exits.
//!
//! `--params-file` names a JSON [`HandlerParams`] file (mode 0600, written by
//! the core): the handler's options stay off the world-readable command
//! line. `--params <json>` gives the same inline (for trying a shim by hand).
//!
//! One-shot commands that fail exit with [`EXIT_HANDLER_ERROR`] and write an
//! encoded `types::Error` to stdout; any other non-zero exit is a crash.
//!
//! Errors cross ttrpc as the response status: each [`ErrorKind`] has its own
//! gRPC code (`NotReady` is `UNAVAILABLE`), and the message is the handler's.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ttrpc::r#async::{MethodHandler, Server, Service, TtrpcContext};
use ttrpc::{Code, get_status};

use crate::wire::{self, method, panic_message};
use crate::{ErrorKind, HandlerError, HandlerParams, HandlerResult, RuntimeHandler};

/// Exit status of a one-shot command whose handler returned an error.
pub const EXIT_HANDLER_ERROR: u8 = 2;

/// gRPC/ttrpc code of a handler error kind.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::Internal => Code::INTERNAL,
        ErrorKind::NotFound => Code::NOT_FOUND,
        ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
        ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
        ErrorKind::Unimplemented => Code::UNIMPLEMENTED,
        ErrorKind::NotReady => Code::UNAVAILABLE,
        ErrorKind::DeadlineExceeded => Code::DEADLINE_EXCEEDED,
        ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
    }
}

/// Handler error kind of a ttrpc code; codes no handler sends are `Internal`.
pub fn kind_of(code: Code) -> ErrorKind {
    match code {
        Code::NOT_FOUND => ErrorKind::NotFound,
        Code::INVALID_ARGUMENT => ErrorKind::InvalidArgument,
        Code::FAILED_PRECONDITION => ErrorKind::FailedPrecondition,
        Code::UNIMPLEMENTED => ErrorKind::Unimplemented,
        Code::UNAVAILABLE => ErrorKind::NotReady,
        Code::DEADLINE_EXCEEDED => ErrorKind::DeadlineExceeded,
        Code::ALREADY_EXISTS => ErrorKind::AlreadyExists,
        _ => ErrorKind::Internal,
    }
}

/// How [`serve_shim_with`] runs the handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShimOptions {
    /// Run every task of the shim on the main thread (a tokio
    /// `current_thread` runtime) instead of a thread pool. A handler needs
    /// this when the processes it starts must die with the shim: Linux
    /// delivers `PR_SET_PDEATHSIG` when the *thread* that forked the child
    /// exits, and pool threads come and go. With it, process spawning must
    /// not happen in `spawn_blocking` (those threads end too).
    pub current_thread: bool,
}

/// Parsed command line of a shim.
#[derive(Debug, Default)]
struct Args {
    command: String,
    socket: Option<String>,
    sandbox_id: Option<String>,
    params: HandlerParams,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args {
        command: args
            .next()
            .ok_or("missing command (info, check-ready or serve)")?,
        ..Default::default()
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => out.socket = Some(value()?),
            "--sandbox-id" => out.sandbox_id = Some(value()?),
            "--params" => {
                out.params = HandlerParams::from_json(value()?.as_bytes())
                    .map_err(|e| format!("invalid --params: {e}"))?
            }
            "--params-file" => {
                let path = value()?;
                let text = std::fs::read(&path)
                    .map_err(|e| format!("cannot read --params-file {path}: {e}"))?;
                out.params = HandlerParams::from_json(&text)
                    .map_err(|e| format!("invalid --params-file {path}: {e}"))?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(out)
}

/// The whole `main` of a shim executable for handler type `H` built by
/// `ctor`; `version` is reported by `Info`. Runs on a multi-threaded
/// runtime; see [`serve_shim_with`] for the options.
pub fn serve_shim<H, F>(version: &'static str, ctor: F) -> ExitCode
where
    H: RuntimeHandler + 'static,
    F: FnOnce(HandlerParams) -> HandlerResult<H>,
{
    serve_shim_with(ShimOptions::default(), version, ctor)
}

/// [`serve_shim`] with [`ShimOptions`].
pub fn serve_shim_with<H, F>(options: ShimOptions, version: &'static str, ctor: F) -> ExitCode
where
    H: RuntimeHandler + 'static,
    F: FnOnce(HandlerParams) -> HandlerResult<H>,
{
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(err) => {
            eprintln!(
                "usage: {{info|check-ready|serve --socket PATH --sandbox-id ID}} \
                 {{--params-file PATH|--params JSON}}: {err}"
            );
            return ExitCode::from(64);
        }
    };
    let runtime = match build_runtime(options) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let handler = {
        let _guard = runtime.enter();
        match ctor(args.params) {
            Ok(handler) => Arc::new(handler) as Arc<dyn RuntimeHandler>,
            Err(err) => return one_shot_answer(Err(err)),
        }
    };
    match args.command.as_str() {
        "info" => one_shot_answer(runtime.block_on(wire::dispatch(
            handler.as_ref(),
            version,
            method::INFO,
            &[],
        ))),
        "check-ready" => one_shot_answer(runtime.block_on(wire::dispatch(
            handler.as_ref(),
            version,
            method::CHECK_READY,
            &[],
        ))),
        "serve" => {
            let (Some(socket), Some(sandbox_id)) = (args.socket, args.sandbox_id) else {
                eprintln!("serve needs --socket and --sandbox-id");
                return ExitCode::from(64);
            };
            match runtime.block_on(serve(handler, version, &socket, &sandbox_id)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("shim for pod {sandbox_id}: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        other => {
            eprintln!("unknown command {other:?} (info, check-ready or serve)");
            ExitCode::from(64)
        }
    }
}

fn build_runtime(options: ShimOptions) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if options.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

fn one_shot_answer(result: HandlerResult<Vec<u8>>) -> ExitCode {
    use std::io::Write;
    let (code, bytes) = match result {
        Ok(bytes) => (ExitCode::SUCCESS, bytes),
        Err(err) => (
            ExitCode::from(EXIT_HANDLER_ERROR),
            wire::encode(&err.to_wire()),
        ),
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&bytes)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    code
}

/// One method of the service: every method shares the handler.
struct Method {
    name: &'static str,
    version: &'static str,
    handler: Arc<dyn RuntimeHandler>,
    removed: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl MethodHandler for Method {
    async fn handler(
        &self,
        _ctx: TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let (handler, name, version) = (self.handler.clone(), self.name, self.version);
        // A task of its own, so a panicking handler becomes an error answer
        // instead of a request that never gets one.
        let result = tokio::spawn(async move {
            wire::dispatch(handler.as_ref(), version, name, &req.payload).await
        })
        .await
        .unwrap_or_else(|join| {
            let why = if join.is_panic() {
                panic_message(&*join.into_panic())
            } else {
                join.to_string()
            };
            Err(HandlerError::internal(format!(
                "handler {} panicked in {name}: {why}",
                self.handler.name()
            )))
        });
        let mut response = ttrpc::Response::new();
        match result {
            Ok(payload) => {
                response.set_status(get_status(Code::OK, ""));
                response.payload = payload;
                if name == method::REMOVE_SANDBOX {
                    self.removed.notify_one();
                }
            }
            Err(err) => response.set_status(get_status(code_of(err.kind), err.message)),
        }
        Ok(response)
    }
}

async fn serve(
    handler: Arc<dyn RuntimeHandler>,
    version: &'static str,
    socket: &str,
    sandbox_id: &str,
) -> Result<(), String> {
    let removed = Arc::new(tokio::sync::Notify::new());
    let methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = method::ALL
        .iter()
        .map(|name| {
            let method = Method {
                name,
                version,
                handler: handler.clone(),
                removed: removed.clone(),
            };
            (
                name.to_string(),
                Box::new(method) as Box<dyn MethodHandler + Send + Sync>,
            )
        })
        .collect();
    let service = Service {
        methods,
        streams: HashMap::new(),
    };
    // A socket left by an earlier shim of this pod that crashed.
    let _ = tokio::fs::remove_file(socket).await;
    let mut server = Server::new()
        .bind(&format!("unix://{socket}"))
        .map_err(|e| format!("cannot listen on {socket}: {e}"))?
        .register_service(HashMap::from([(wire::SERVICE.to_string(), service)]));
    server
        .start()
        .await
        .map_err(|e| format!("cannot serve on {socket}: {e}"))?;
    eprintln!(
        "shim for pod {sandbox_id} serving {} on {socket}",
        wire::SERVICE
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    tokio::select! {
        _ = removed.notified() => {
            // Let the RemoveSandbox answer reach the core before going away.
            tokio::time::sleep(Duration::from_millis(100)).await;
            eprintln!("pod {sandbox_id} removed; shim exiting");
        }
        _ = term.recv() => eprintln!("SIGTERM; shim for pod {sandbox_id} exiting"),
    }
    let _ = tokio::fs::remove_file(socket).await;
    Ok(())
}

/// Why a call to a shim failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The handler answered with an error.
    #[error("{0}")]
    Handler(HandlerError),
    /// No answer: the connection broke (the shim died) or timed out.
    #[error("{0}")]
    Transport(String),
}

/// The core's connection to one shim.
#[derive(Clone)]
pub struct ShimClient {
    inner: ttrpc::r#async::Client,
}

impl std::fmt::Debug for ShimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShimClient")
    }
}

impl ShimClient {
    /// Connects to a shim's socket (fails at once if nobody listens).
    pub async fn connect(socket: &Path) -> Result<Self, String> {
        let inner = ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { inner })
    }

    /// One call; `timeout` bounds the wait for the answer.
    pub async fn call(
        &self,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let mut request = ttrpc::Request::new();
        request.set_service(wire::SERVICE.to_string());
        request.set_method(method.to_string());
        request.set_timeout_nano(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX));
        request.payload = payload;
        match self.inner.request(request).await {
            Ok(response) => Ok(response.payload),
            Err(ttrpc::Error::RpcStatus(status)) => Err(CallError::Handler(HandlerError::new(
                kind_of(status.code()),
                status.message().to_string(),
            ))),
            Err(err) => Err(CallError::Transport(err.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Capabilities, InfoResponse, SandboxRef};

    struct Crashy;

    #[async_trait]
    impl RuntimeHandler for Crashy {
        fn name(&self) -> &str {
            "crashy"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                recursive_read_only_mounts: true,
                ..Default::default()
            }
        }
        async fn check_ready(&self) -> HandlerResult<()> {
            Err(HandlerError::not_ready("crashy", "no coffee"))
        }
        async fn stop_sandbox(&self, req: SandboxRef) -> HandlerResult<()> {
            panic!("boom in {}", req.sandbox_id)
        }
    }

    #[test]
    fn codes_round_trip() {
        for kind in [
            ErrorKind::Internal,
            ErrorKind::NotFound,
            ErrorKind::InvalidArgument,
            ErrorKind::FailedPrecondition,
            ErrorKind::Unimplemented,
            ErrorKind::NotReady,
            ErrorKind::DeadlineExceeded,
            ErrorKind::AlreadyExists,
        ] {
            assert_eq!(kind_of(code_of(kind)), kind);
        }
        assert_eq!(kind_of(Code::DATA_LOSS), ErrorKind::Internal);
    }

    #[test]
    fn args_parse() {
        let args = parse_args(
            [
                "serve",
                "--socket",
                "/s",
                "--sandbox-id",
                "p",
                "--params",
                r#"{"name":"x","future":1}"#,
            ]
            .into_iter()
            .map(String::from),
        )
        .unwrap();
        assert_eq!(
            (args.command.as_str(), args.socket.as_deref()),
            ("serve", Some("/s"))
        );
        assert_eq!(args.params.name, "x");
        assert!(parse_args(["serve", "--bogus"].into_iter().map(String::from)).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("params.json");
        std::fs::write(&file, r#"{"name":"from-file","options":{"k":1}}"#).unwrap();
        let file = file.to_str().unwrap().to_string();
        let args = parse_args(
            [
                "info".to_string(),
                "--params-file".to_string(),
                file.clone(),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(args.params.name, "from-file");
        assert_eq!(args.params.options["k"], 1);
        let err = parse_args(
            ["info", "--params-file", "/nonexistent/p.json"]
                .into_iter()
                .map(String::from),
        )
        .unwrap_err();
        assert!(
            err.contains("cannot read --params-file /nonexistent/p.json"),
            "{err}"
        );
    }

    #[test]
    fn current_thread_option_selects_the_runtime_flavor() {
        use tokio::runtime::RuntimeFlavor;
        let flavor = |current_thread| {
            build_runtime(ShimOptions { current_thread })
                .unwrap()
                .block_on(async { tokio::runtime::Handle::current().runtime_flavor() })
        };
        assert_eq!(flavor(true), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(false), RuntimeFlavor::MultiThread);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn serves_over_ttrpc_and_maps_errors_and_panics() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let socket_str = socket.to_str().unwrap().to_string();
        let server =
            tokio::spawn(async move { serve(Arc::new(Crashy), "9.9", &socket_str, "p1").await });
        let client = loop {
            if let Ok(client) = ShimClient::connect(&socket).await {
                break client;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let timeout = Duration::from_secs(5);
        let info: InfoResponse = wire::decode_response(
            "Info",
            &client.call(method::INFO, vec![], timeout).await.unwrap(),
        )
        .unwrap();
        assert_eq!(
            (info.name.as_str(), info.version.as_str()),
            ("crashy", "9.9")
        );

        let Err(CallError::Handler(err)) = client.call(method::CHECK_READY, vec![], timeout).await
        else {
            panic!("CheckReady should fail");
        };
        assert_eq!(err.kind, ErrorKind::NotReady);
        assert!(err.message.contains("no coffee"), "{err}");

        let req = wire::encode(&SandboxRef {
            sandbox_id: "p1".into(),
        });
        let Err(CallError::Handler(err)) = client.call(method::STOP_SANDBOX, req, timeout).await
        else {
            panic!("StopSandbox should fail");
        };
        assert_eq!(err.kind, ErrorKind::Internal);
        assert!(
            err.message.contains("panicked in StopSandbox: boom in p1"),
            "{err}"
        );

        // The server survived the panic.
        client.call(method::INFO, vec![], timeout).await.unwrap();
        server.abort();
    }
}
