# Sourced by scripts/demo and scripts/bench: starts a local registry (busybox
# images; docker.io/library is served by it as a plain-HTTP mirror, as on an
# air-gapped node) and the crius daemon with the shipped default config plus
# a drop-in (private paths, the mirror, and the kata handler when its guest
# image exists). `ctl` runs criusctl against it. Everything is stopped and
# removed again on exit. Expects $repo and built binaries in $bin.

work=$(mktemp -d /tmp/crius-node.XXXXXX)
socket="$work/crius.sock"
registry_pid=""
daemon_pid=""
kata_guest_dir="${CRIUS_KATA_GUEST_DIR:-/var/lib/crius/kata}"

ctl() { "$bin/criusctl" -s "$socket" "$@"; }

# exec_in_cgroup DIR CMD... (in a background job: `exec_in_cgroup D cmd &`
# leaves $! the pid of cmd): becomes CMD in the cgroup DIR (made when
# missing), so that the bench can read the CPU of a daemon and of all it
# forks; with an empty DIR, just becomes CMD.
exec_in_cgroup() {
    local dir="$1"; shift
    [ -z "$dir" ] && exec "$@"
    mkdir -p "$dir"
    exec sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' exec_in_cgroup "$dir" "$@"
}

stop_local_node() {
    set +e
    if [ -n "$daemon_pid" ] && [ -S "$socket" ]; then
        for pod in $(ctl pods -q 2>/dev/null); do
            ctl rmp "$pod" >/dev/null 2>&1
        done
    fi
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null && wait "$registry_pid" 2>/dev/null
    # The daemon pins network namespaces under its state dir (a bind-mounted
    # dir); unmount whatever is still mounted under the work dir, deepest first.
    awk -v w="$work" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$work"
    [ -n "${crius_cgroup:-}" ] && rmdir "$crius_cgroup" 2>/dev/null
    return 0
}

start_local_node() {
    trap stop_local_node EXIT

    echo "node: starting the local registry with busybox images"
    "$bin/crius-demo-registry" "$work/registry.addr" >"$work/registry.log" 2>&1 &
    registry_pid=$!
    for _ in $(seq 100); do [ -s "$work/registry.addr" ] && break; sleep 0.2; done
    [ -s "$work/registry.addr" ] || { cat "$work/registry.log"; echo "node: registry did not start" >&2; exit 1; }
    registry=$(cat "$work/registry.addr")

    mkdir -p "$work/cni"
    cp "$repo/configs/cni/10-crius-bridge.conflist" "$work/cni/"

    # The shipped default config plus a drop-in: drop-ins are how operators
    # override the default.
    cp "$repo/configs/crius.yaml" "$work/crius.yaml"
    mkdir -p "$work/crius.yaml.d"
    cat >"$work/crius.yaml.d/50-local-node.yaml" <<YAML
listen: $socket
root: $work/root
state_dir: $work/state
cni:
  conf_dir: $work/cni
  bin_dirs: [/usr/lib/cni]
registries:
  - prefix: docker.io/library
    blocked: true
    mirrors:
      - location: $registry
        insecure: true
YAML
    # The bench reads the daemon's pod-start phases off its metrics.
    if [ -n "${metrics_address:-}" ]; then
        echo "metrics_address: $metrics_address" >>"$work/crius.yaml.d/50-local-node.yaml"
    fi
    if [ -f "$kata_guest_dir/vmlinux" ] && [ -f "$kata_guest_dir/initramfs.cpio.gz" ]; then
        # TCG works everywhere; on hosts whose /dev/kvm boots a normal
        # kernel, CRIUS_KATA_ACCEL=kvm is much faster.
        local accel="${CRIUS_KATA_ACCEL:-tcg}"
        cat >"$work/crius.yaml.d/60-kata.yaml" <<YAML
runtime_handlers:
  kata:
    kind: vm
    runtime_path: /usr/bin/qemu-system-x86_64
    vm:
      accelerator: $accel
      kernel: $kata_guest_dir/vmlinux
      initrd: $kata_guest_dir/initramfs.cpio.gz
      vhost_device_vsock_path: $(command -v vhost-device-vsock || echo "$HOME/.cargo/bin/vhost-device-vsock")
YAML
    else
        echo "node: no kata guest image in $kata_guest_dir (scripts/setup --with-kata builds it); kata not configured"
    fi

    echo "node: starting crius"
    NO_COLOR=1 exec_in_cgroup "${crius_cgroup:-}" "$bin/crius" --config "$work/crius.yaml" >"$work/crius.log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
    [ -S "$socket" ] || { cat "$work/crius.log"; echo "node: crius did not start" >&2; exit 1; }
}
