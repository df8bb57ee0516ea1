//! The OCI runtime spec on the agent API: JSON bytes in crius's extension
//! fields (`CreateContainerRequest.oci_spec_json`,
//! `ExecProcessRequest.process_json`, `UpdateContainerRequest.resources_json`),
//! typed with `oci-spec` on both sides. The host serialises what it built,
//! the agent deserialises into the same types and writes `config.json` from
//! them: nothing is converted by hand, so every field the OCI spec knows
//! (hooks, hostname, …) reaches the guest's runtime.
//!
//! Kata's protobuf form (`grpc.Spec`, `grpc.Process`, `grpc.LinuxResources`
//! in fields `OCI`, `process`, `resources`) stays declared, so the messages
//! keep Kata's shape, but the crius agent does not read it: a request that
//! carries only that form is refused with [`OciJsonError::Missing`].

use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::agent::{CreateContainerRequest, ExecProcessRequest, UpdateContainerRequest};

/// Field number of the JSON extension fields (high, so it never collides
/// with a field Kata adds).
pub const EXTENSION_FIELD: u32 = 100;

/// Longest error text taken from a JSON parser (the message goes back to
/// the host).
const MAX_ERROR: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum OciJsonError {
    /// The request has no JSON field (e.g. it came from a Kata runtime,
    /// which sends only the protobuf form).
    #[error(
        "{request}: {field} (field {EXTENSION_FIELD}, the OCI {what} as JSON) is empty; \
         this agent does not read Kata's protobuf {kata_field} field"
    )]
    Missing {
        request: &'static str,
        field: &'static str,
        what: &'static str,
        kata_field: &'static str,
    },
    #[error("{request}: {field} is not a valid OCI {what}: {message}")]
    Invalid {
        request: &'static str,
        field: &'static str,
        what: &'static str,
        message: String,
    },
    #[error("encoding the OCI {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, OciJsonError> {
    serde_json::to_vec(value).map_err(|source| OciJsonError::Encode { what, source })
}

fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    request: &'static str,
    field: &'static str,
    what: &'static str,
    kata_field: &'static str,
) -> Result<T, OciJsonError> {
    if bytes.is_empty() {
        return Err(OciJsonError::Missing {
            request,
            field,
            what,
            kata_field,
        });
    }
    serde_json::from_slice(bytes).map_err(|err| {
        let mut message = err.to_string();
        if message.len() > MAX_ERROR {
            let mut end = MAX_ERROR;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        OciJsonError::Invalid {
            request,
            field,
            what,
            message,
        }
    })
}

/// CreateContainer for `container_id` with `spec` (exec id = container id,
/// as Kata's runtime sends it). Storages etc. are the caller's to add.
pub fn create_container_request(
    container_id: &str,
    spec: &Spec,
) -> Result<CreateContainerRequest, OciJsonError> {
    Ok(CreateContainerRequest {
        container_id: container_id.to_string(),
        exec_id: container_id.to_string(),
        oci_spec_json: encode(spec, "runtime spec")?,
        ..Default::default()
    })
}

/// The spec of a CreateContainer request.
pub fn spec_of(req: &CreateContainerRequest) -> Result<Spec, OciJsonError> {
    decode(
        &req.oci_spec_json,
        "CreateContainer",
        "oci_spec_json",
        "runtime spec",
        "OCI",
    )
}

/// ExecProcess of `process` as exec `exec_id` in `container_id`.
pub fn exec_process_request(
    container_id: &str,
    exec_id: &str,
    process: &Process,
) -> Result<ExecProcessRequest, OciJsonError> {
    Ok(ExecProcessRequest {
        container_id: container_id.to_string(),
        exec_id: exec_id.to_string(),
        process_json: encode(process, "process")?,
        ..Default::default()
    })
}

/// The process of an ExecProcess request.
pub fn process_of(req: &ExecProcessRequest) -> Result<Process, OciJsonError> {
    decode(
        &req.process_json,
        "ExecProcess",
        "process_json",
        "process",
        "process",
    )
}

/// UpdateContainer of `container_id` to `resources`.
pub fn update_container_request(
    container_id: &str,
    resources: &LinuxResources,
) -> Result<UpdateContainerRequest, OciJsonError> {
    Ok(UpdateContainerRequest {
        container_id: container_id.to_string(),
        resources_json: encode(resources, "linux resources")?,
        ..Default::default()
    })
}

/// The resources of an UpdateContainer request.
pub fn resources_of(req: &UpdateContainerRequest) -> Result<LinuxResources, OciJsonError> {
    decode(
        &req.resources_json,
        "UpdateContainer",
        "resources_json",
        "linux resources",
        "resources",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    /// What the conversion to `grpc.Spec` used to lose survives the wire.
    #[test]
    fn spec_round_trips_through_the_wire_with_hooks_and_hostname() {
        let json = serde_json::json!({
            "ociVersion": "1.0.2",
            "hostname": "web-0",
            "domainname": "example.org",
            "root": {"path": "rootfs", "readonly": true},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "noNewPrivileges": true, "oomScoreAdj": -10},
            "hooks": {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "true"], "timeout": 5}],
                      "createRuntime": [{"path": "/usr/bin/x"}]},
            "annotations": {"a": "b"},
            "linux": {"namespaces": [{"type": "uts", "path": "/proc/1/ns/uts"}],
                      "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38},
                      "intelRdt": {"closID": "x"},
                      "personality": {"domain": "LINUX32"}}
        });
        let spec: Spec = serde_json::from_value(json).unwrap();
        let req = create_container_request("c1", &spec).unwrap();
        let wire = req.write_to_bytes().unwrap();
        let back = CreateContainerRequest::parse_from_bytes(&wire).unwrap();
        let got = spec_of(&back).unwrap();
        assert_eq!(got, spec);
        assert_eq!(got.hostname().as_deref(), Some("web-0"));
        let hooks = got.hooks().clone().unwrap();
        assert_eq!(
            hooks.start_container().as_ref().unwrap()[0].timeout(),
            Some(5)
        );
        assert_eq!(back.container_id, "c1");
    }

    #[test]
    fn process_and_resources_round_trip() {
        let process: Process = serde_json::from_value(serde_json::json!({
            "args": ["cat"], "cwd": "/", "terminal": true,
            "consoleSize": {"height": 24, "width": 80},
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
        }))
        .unwrap();
        let req = exec_process_request("c1", "e1", &process).unwrap();
        let back = ExecProcessRequest::parse_from_bytes(&req.write_to_bytes().unwrap()).unwrap();
        assert_eq!(process_of(&back).unwrap(), process);

        let resources: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 50331648, "swap": 0},
            "cpu": {"shares": 512, "quota": 0, "cpus": "0"},
            "pids": {"limit": 100}
        }))
        .unwrap();
        let req = update_container_request("c1", &resources).unwrap();
        let back =
            UpdateContainerRequest::parse_from_bytes(&req.write_to_bytes().unwrap()).unwrap();
        let got = resources_of(&back).unwrap();
        assert_eq!(got, resources);
        // Zero is a value, not "unset": the quota of 0 is kept.
        assert_eq!(got.cpu().as_ref().unwrap().quota(), Some(0));
    }

    /// A Kata-style request (only the protobuf form) is refused by name.
    #[test]
    fn a_request_without_the_json_field_is_refused_clearly() {
        let kata = CreateContainerRequest {
            container_id: "c1".into(),
            OCI: Some(crate::oci::Spec {
                Hostname: "x".into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let err = spec_of(&kata).unwrap_err().to_string();
        assert!(
            err.contains("oci_spec_json") && err.contains("OCI"),
            "{err}"
        );
        let bad = CreateContainerRequest {
            oci_spec_json: b"{\"process\": 5}".to_vec(),
            ..Default::default()
        };
        let err = spec_of(&bad).unwrap_err().to_string();
        assert!(err.contains("not a valid OCI runtime spec"), "{err}");
        let huge = CreateContainerRequest {
            oci_spec_json: format!("{{\"{}\": [}}", "k".repeat(10_000)).into_bytes(),
            ..Default::default()
        };
        assert!(spec_of(&huge).unwrap_err().to_string().len() < 600);
        assert!(process_of(&ExecProcessRequest::default()).is_err());
        assert!(resources_of(&UpdateContainerRequest::default()).is_err());
    }
}
