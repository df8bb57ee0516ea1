//! Attach through conmon: its control FIFO and its attach socket.

use super::*;

/// Writes one line to conmon's control FIFO; a FIFO without a reader
/// (conmon gone) fails with ENXIO instead of blocking.
pub(super) fn write_ctl(fifo: &Path, line: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)?;
    f.write_all(line)
}

/// Moves bytes between conmon's attach socket and the core's sockets
/// until the container's output ends or the core goes away.
pub(super) async fn attach_session(
    conmon: FdStream,
    stdin: Option<UnixStream>,
    stdout: Option<UnixStream>,
    stderr: Option<UnixStream>,
) {
    let (mut out_read, mut out_write) = match stdout {
        Some(s) => {
            let (r, w) = s.into_split();
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    let (mut err_read, mut err_write) = match stderr {
        Some(s) => {
            let (r, w) = s.into_split();
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    let input = {
        let mut conmon = conmon.clone();
        async move {
            if let Some(mut stdin) = stdin {
                let _ = pump(&mut stdin, &mut conmon).await;
                // conmon reads EOF: under stdin_once it closes the
                // container's stdin; otherwise it forgets this client.
                let _ = conmon.shutdown_write();
            }
            std::future::pending::<()>().await
        }
    };
    let output = async {
        let mut conmon = conmon.clone();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match conmon.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let target = match buf[0] {
                2 => out_write.as_mut(),
                3 => err_write.as_mut().or(out_write.as_mut()),
                _ => None,
            };
            if let Some(w) = target
                && w.write_all(&buf[1..n]).await.is_err()
            {
                break;
            }
        }
    };
    // The core never writes to the output sockets: a read there ending
    // means it closed them (the client left).
    let core_gone = async {
        let mut scratch = [0u8; 1];
        match (out_read.as_mut(), err_read.as_mut()) {
            (Some(r), _) | (None, Some(r)) => {
                let _ = r.read(&mut scratch).await;
            }
            (None, None) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = output => {}
        _ = input => {}
        _ = core_gone => {}
    }
    if let Some(mut w) = out_write {
        let _ = w.shutdown().await;
    }
    if let Some(mut w) = err_write {
        let _ = w.shutdown().await;
    }
}
