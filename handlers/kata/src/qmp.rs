//! Resizing a running VM through QEMU's QMP monitor: vCPU hot-plug
//! (`query-hotpluggable-cpus` + `device_add`) and memory hot-plug (a memfd
//! backend + a `pc-dimm`). QMP is JSON lines on a unix socket; each
//! operation opens its own session (QEMU serves one client at a time).

use std::path::Path;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Memory is added in multiples of the guest's memory block (x86_64:
/// 128 MiB): the kernel onlines whole blocks only.
pub const MEMORY_BLOCK_MIB: u64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP: unexpected answer {0}")]
    Protocol(String),
}

struct Session {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    path: String,
}

impl Session {
    async fn open(socket: &Path) -> Result<Self, QmpError> {
        let path = socket.display().to_string();
        let io = |source| QmpError::Io {
            path: path.clone(),
            source,
        };
        let stream = UnixStream::connect(socket).await.map_err(io)?;
        let (read, writer) = stream.into_split();
        let mut session = Session {
            reader: BufReader::new(read),
            writer,
            path: path.clone(),
        };
        let greeting = session.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        session.execute("qmp_capabilities", json!({})).await?;
        Ok(session)
    }

    async fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Protocol("QEMU closed the monitor".into()));
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("{e}: {line}")))
    }

    /// Runs `command`; events arriving meanwhile are skipped.
    async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command, "arguments": arguments }).to_string();
        request.push('\n');
        self.writer
            .write_all(request.as_bytes())
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let answer = self.read().await?;
            if let Some(ret) = answer.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = answer.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or_default().to_string(),
                    desc: err["desc"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
    }
}

/// Adds vCPUs until `count` of them are plugged (or no slot is left);
/// returns how many are plugged afterwards.
pub async fn plug_vcpus(socket: &Path, count: u32) -> Result<u32, QmpError> {
    let mut qmp = Session::open(socket).await?;
    let slots = qmp.execute("query-hotpluggable-cpus", json!({})).await?;
    let slots = slots
        .as_array()
        .ok_or_else(|| QmpError::Protocol(slots.to_string()))?;
    let mut plugged = slots.iter().filter(|s| s.get("qom-path").is_some()).count() as u32;
    // Lowest free slots first, so the guest's CPU numbers stay dense.
    let mut free: Vec<&Value> = slots
        .iter()
        .filter(|s| s.get("qom-path").is_none())
        .collect();
    free.reverse();
    for slot in free {
        if plugged >= count {
            break;
        }
        let mut args = slot["props"].clone();
        let driver = slot["type"].as_str().unwrap_or_default().to_string();
        let id = format!(
            "cpu-{}-{}-{}",
            args["socket-id"], args["core-id"], args["thread-id"]
        );
        if let Some(map) = args.as_object_mut() {
            map.insert("driver".into(), json!(driver));
            map.insert("id".into(), json!(id));
        }
        qmp.execute("device_add", args).await?;
        plugged += 1;
    }
    Ok(plugged)
}

/// Adds one DIMM of `mib` MiB (a multiple of [`MEMORY_BLOCK_MIB`]) backed
/// by shared memfd memory, like the boot memory (vhost-user devices map
/// guest RAM). `index` names it and must be new for this VM.
pub async fn plug_memory(socket: &Path, mib: u64, index: u32) -> Result<(), QmpError> {
    let mut qmp = Session::open(socket).await?;
    let backend = format!("hotmem{index}");
    qmp.execute(
        "object-add",
        json!({
            "qom-type": "memory-backend-memfd",
            "id": backend,
            "size": mib << 20,
            "share": true,
        }),
    )
    .await?;
    let plugged = qmp
        .execute(
            "device_add",
            json!({ "driver": "pc-dimm", "id": format!("dimm{index}"), "memdev": backend }),
        )
        .await;
    if plugged.is_err() {
        // Give the backend's memory back.
        let _ = qmp.execute("object-del", json!({ "id": backend })).await;
    }
    plugged.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QMP server double speaking the real framing.
    async fn fake_qemu(socket: std::path::PathBuf, answers: Vec<Value>) -> Vec<Value> {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut answers = answers.into_iter();
        while let Ok(Some(line)) = lines.next_line().await {
            let request: Value = serde_json::from_str(&line).unwrap();
            let answer = if request["execute"] == "qmp_capabilities" {
                json!({"return": {}})
            } else {
                seen.push(request);
                // An event in between is skipped by the client.
                write
                    .write_all(b"{\"event\": \"ACPI_DEVICE_OST\", \"data\": {}}\n")
                    .await
                    .unwrap();
                answers.next().unwrap_or(json!({"return": {}}))
            };
            let mut text = answer.to_string();
            text.push('\n');
            write.write_all(text.as_bytes()).await.unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn vcpus_go_into_the_free_slots_lowest_first() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let slots = json!({"return": [
            {"type": "max-x86_64-cpu", "vcpus-count": 1, "props": {"socket-id": 2, "core-id": 0, "thread-id": 0}},
            {"type": "max-x86_64-cpu", "vcpus-count": 1, "props": {"socket-id": 1, "core-id": 0, "thread-id": 0}},
            {"type": "max-x86_64-cpu", "vcpus-count": 1, "props": {"socket-id": 0, "core-id": 0, "thread-id": 0},
             "qom-path": "/machine/unattached/device[0]"}
        ]});
        let server = tokio::spawn(fake_qemu(socket.clone(), vec![slots]));
        while !socket.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(plug_vcpus(&socket, 2).await.unwrap(), 2);
        let seen = server.await.unwrap();
        assert_eq!(seen[0]["execute"], "query-hotpluggable-cpus");
        assert_eq!(seen.len(), 2, "one device_add: {seen:?}");
        assert_eq!(
            seen[1]["arguments"],
            json!({"driver": "max-x86_64-cpu", "id": "cpu-1-0-0",
                   "socket-id": 1, "core-id": 0, "thread-id": 0})
        );
    }

    #[tokio::test]
    async fn a_refused_dimm_gives_its_backend_back() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmp.sock");
        let refused = json!({"error": {"class": "GenericError", "desc": "no free slots"}});
        let server = tokio::spawn(fake_qemu(
            socket.clone(),
            vec![json!({"return": {}}), refused],
        ));
        while !socket.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let err = plug_memory(&socket, 256, 0).await.unwrap_err();
        assert!(err.to_string().contains("no free slots"), "{err}");
        let seen = server.await.unwrap();
        let commands: Vec<&str> = seen
            .iter()
            .map(|r| r["execute"].as_str().unwrap())
            .collect();
        assert_eq!(commands, ["object-add", "device_add", "object-del"]);
        assert_eq!(seen[0]["arguments"]["size"], 256u64 << 20);
    }
}
