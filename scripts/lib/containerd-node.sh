# Sourced by scripts/bench after local-node.sh (needs $work, $registry, $repo):
# starts Debian's containerd (installed with apt when missing) as a peer to
# measure crius against, with a private config: its own socket, root and
# state under $work/containerd, the CRI plugin on the same CNI conf/bin dirs
# as the crius node, the same runc, docker.io mirrored to the same local
# registry, restrict_oom_score_adj. `cctl` runs criusctl against it.
# stop_containerd (chained into the local node's EXIT trap) stops it and
# removes its dirs.

cd_dir="$work/containerd"
cd_socket="$cd_dir/containerd.sock"
containerd_pid=""
cd_made_run_dir=""
# The sandbox (pause) image containerd starts in each pod: the local registry
# has none, so a busybox whose command blocks is pushed as one.
cd_sandbox_image="docker.io/library/crius-pause:latest"

cctl() { "$bin/criusctl" -s "$cd_socket" "$@"; }

install_containerd() {
    command -v containerd >/dev/null && command -v containerd-shim-runc-v2 >/dev/null && return
    echo "containerd: installing Debian's containerd (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends containerd >/dev/null
    # The package enables a system instance; the bench runs its own.
    systemctl disable --now containerd >/dev/null 2>&1 || true
}

# containerd resolves docker.io/library/NAME on a mirror as /v2/library/NAME,
# the crius mirror prefix as /v2/NAME: copy busybox there, and push the
# pause image (busybox's layers, a config whose command blocks).
push_peer_images() {
    python3 - "$registry" <<'PY'
import hashlib, json, sys, urllib.request

base = "http://" + sys.argv[1]
MT = "application/vnd.docker.distribution.manifest.v2+json"
LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

def req(method, url, data=None, headers=None):
    r = urllib.request.Request(url if url.startswith("http") else base + url,
                               data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(r)

def manifest(repo, ref):
    r = req("GET", f"/v2/{repo}/manifests/{ref}",
            headers={"Accept": ", ".join([MT, OCI, LIST, OCI_INDEX])})
    m = json.load(r)
    if m.get("manifests"):
        entry = next((e for e in m["manifests"]
                      if e.get("platform", {}).get("architecture") == "amd64"), m["manifests"][0])
        return manifest(repo, entry["digest"])
    return m

def blob(repo, digest):
    return req("GET", f"/v2/{repo}/blobs/{digest}").read()

def upload(repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = req("POST", f"/v2/{repo}/blobs/uploads/").headers["Location"]
    sep = "&" if "?" in loc else "?"
    req("PUT", f"{loc}{sep}digest={digest}", data=data,
        headers={"Content-Type": "application/octet-stream"})
    return digest

def push(repo, tag, src, cmd=None):
    m = manifest("busybox", "latest")
    for layer in m["layers"]:
        upload(repo, blob("busybox", layer["digest"]))
    config = blob("busybox", m["config"]["digest"])
    if cmd:
        c = json.loads(config)
        c.setdefault("config", {})["Cmd"] = cmd
        c["config"]["Entrypoint"] = None
        config = json.dumps(c).encode()
    m["config"]["digest"] = upload(repo, config)
    m["config"]["size"] = len(config)
    body = json.dumps(m).encode()
    req("PUT", f"/v2/{repo}/manifests/{tag}", data=body,
        headers={"Content-Type": m.get("mediaType", MT)})

push("library/busybox", "latest", "busybox")
push("library/crius-pause", "latest", "busybox", cmd=["sleep", "2147483647"])
PY
}

stop_containerd() {
    set +e
    if [ -n "$containerd_pid" ]; then
        if [ -S "$cd_socket" ]; then
            for pod in $(cctl pods -q 2>/dev/null); do
                cctl rmp "$pod" >/dev/null 2>&1
            done
        fi
        # Shims outlive containerd by design: stop those of this instance
        # (their pid files are under its state dir).
        for pidfile in "$cd_dir"/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
            [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
        done
        kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
    fi
    awk -v w="$cd_dir" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$cd_dir"
    [ -n "${containerd_cgroup:-}" ] && rmdir "$containerd_cgroup" 2>/dev/null
    # containerd 1.6 keeps shim sockets and the runc root under
    # /run/containerd whatever its config says: remove what this run made.
    [ -n "$cd_made_run_dir" ] && find /run/containerd -depth -type d -empty -delete 2>/dev/null
}

start_containerd() {
    install_containerd
    push_peer_images
    mkdir -p "$cd_dir"
    [ -e /run/containerd ] || cd_made_run_dir=1
    cat >"$cd_dir/config.toml" <<TOML
version = 2
root = "$cd_dir/root"
state = "$cd_dir/state"
oom_score = 0

[grpc]
  address = "$cd_socket"

[ttrpc]
  address = "$cd_socket.ttrpc"

[debug]
  address = "$cd_dir/debug.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$cd_sandbox_image"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
$(command -v crun >/dev/null && cat <<CRUN
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
        BinaryName = "$(command -v crun)"
CRUN
)
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$work/cni"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
    endpoint = ["http://$registry"]
TOML
    echo "containerd: starting $(containerd --version | awk '{print $3}') with $cd_dir/config.toml"
    exec_in_cgroup "${containerd_cgroup:-}" containerd --config "$cd_dir/config.toml" >"$cd_dir/containerd.log" 2>&1 &
    containerd_pid=$!
    for _ in $(seq 100); do cctl version >/dev/null 2>&1 && break; sleep 0.1; done
    cctl version >/dev/null 2>&1 || { tail -20 "$cd_dir/containerd.log"; echo "containerd: did not start" >&2; exit 1; }
    cctl pull "$cd_sandbox_image" >/dev/null
}
