//! Exec, Attach and PortForward through the CRI socket: bad input is
//! refused with the right code before any streaming URL is issued.
//! (The protocols themselves are tested in `core/src/streaming`; sessions
//! into real containers, with independent clients and criusctl, in
//! `interactive.rs`.)

use crius_proto::cri::{AttachRequest, ExecRequest, PortForwardRequest};
use crius_tests::{Daemon, require_root};
use tonic::Code;

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_rpcs_validate_before_issuing_urls() {
    if !require_root() {
        return;
    }
    let daemon = Daemon::start("").await.expect("daemon starts");
    let mut runtime = daemon.runtime();

    let exec = |container_id: &str, cmd: &[&str], stdout: bool| ExecRequest {
        container_id: container_id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout,
        stderr: false,
    };

    assert_eq!(
        code(runtime.exec(exec("nonexistent", &[], true)).await),
        Code::InvalidArgument,
        "empty cmd"
    );
    assert_eq!(
        code(runtime.exec(exec("nonexistent", &["id"], false)).await),
        Code::InvalidArgument,
        "no stdin, stdout or stderr"
    );
    assert_eq!(
        code(runtime.exec(exec("nonexistent", &["id"], true)).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            runtime
                .attach(AttachRequest {
                    container_id: "nonexistent".into(),
                    stdin: false,
                    tty: false,
                    stdout: true,
                    stderr: false,
                })
                .await
        ),
        Code::NotFound
    );
    for port in [0, -1, 65536] {
        let status = runtime
            .port_forward(PortForwardRequest {
                pod_sandbox_id: "nonexistent".into(),
                port: vec![80, port],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "port {port}");
        assert!(status.message().contains("1-65535"), "{}", status.message());
    }
    assert_eq!(
        code(
            runtime
                .port_forward(PortForwardRequest {
                    pod_sandbox_id: "nonexistent".into(),
                    port: vec![80],
                })
                .await
        ),
        Code::NotFound
    );
}
