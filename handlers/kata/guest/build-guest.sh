#!/usr/bin/env bash
# Builds the kata guest image: an uncompressed kernel and an initramfs with
# busybox-static, the needed kernel modules, crun (runc where crun is
# missing, or both with --with-runc) and the crius guest agent.
#
# Usage: build-guest.sh [OUT_DIR] [--agent PATH] [--force] [--with-runc]
#                       [--compress lz4|gzip|none]
#   OUT_DIR     default /var/lib/crius/kata
#   --agent     use this agent binary instead of `cargo build --release`
#   --force     rebuild even if the inputs did not change
#   --with-runc also put runc in the image (the agent still prefers crun)
#   --compress  initramfs compression: lz4 (default; gzip when the lz4 tool
#               is missing), gzip or none. The file keeps its historical
#               name initramfs.cpio.gz whatever the format: the kernel
#               detects it from the content.
#
# Output: OUT_DIR/{vmlinux,initramfs.cpio.gz,kernel-release,stamp}.
# Reproducible: same inputs give byte-identical files (fixed mtimes, sorted
# cpio, gzip -n / lz4 without a timestamp). Runs as root (device nodes in
# the initramfs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out=/var/lib/crius/kata
agent=""
force=0
with_runc=0
compress=""
while (($#)); do
    case "$1" in
        --agent) agent="$2"; shift 2 ;;
        --force) force=1; shift ;;
        --with-runc) with_runc=1; shift ;;
        --compress) compress="$2"; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "build-guest: unknown option $1" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
say() { echo "build-guest: $*"; }
die() { echo "build-guest: $*" >&2; exit 1; }

# --- inputs ------------------------------------------------------------------
# The newest Debian kernel installed (linux-image-amd64 pulls it in).
kver="$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | grep -- '-amd64$' | sort -V | tail -n1 || true)"
[[ -n "$kver" ]] || die "no /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64)"
bzimage="/boot/vmlinuz-$kver"
moddir="/lib/modules/$kver"
[[ -f "$moddir/modules.dep" ]] || die "$moddir/modules.dep missing"
busybox=/bin/busybox
[[ -x "$busybox" ]] || die "$busybox missing (apt-get install busybox-static)"
# ldd fails on a static binary ("not a dynamic executable").
if ldd "$busybox" >/dev/null 2>&1; then die "$busybox is not static (apt-get install busybox-static)"; fi
# The in-guest OCI runtime: crun (C, starts a container in a fraction of
# runc's time under emulation, where runc's Go runtime start dominates),
# runc only where crun is missing or when asked for. The agent prefers
# /usr/bin/crun and falls back to /usr/sbin/runc.
crun=/usr/bin/crun
runc=/usr/sbin/runc
runtimes=()
[[ -x "$crun" ]] && runtimes+=("$crun")
if ((with_runc)) || ((${#runtimes[@]} == 0)); then
    [[ -x "$runc" ]] || die "$runc missing (apt-get install crun or runc)"
    runtimes+=("$runc")
fi
for tool in cpio gzip xz; do command -v "$tool" >/dev/null || die "$tool missing"; done
# lz4 unpacks several times faster than gzip under TCG; the kernel reads
# the legacy lz4 frame format (lz4 -l).
if [[ -z "$compress" ]]; then
    if command -v lz4 >/dev/null; then compress=lz4; else compress=gzip; fi
fi
case "$compress" in
    lz4) command -v lz4 >/dev/null || die "lz4 missing (apt-get install lz4)" ;;
    gzip|none) ;;
    *) die "--compress $compress: expected lz4, gzip or none" ;;
esac

if [[ -z "$agent" ]]; then
    say "cargo build --release -p crius-kata-agent"
    (cd "$repo" && cargo build --release -q -p crius-kata-agent)
    target_dir="$(cd "$repo" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    agent="${target_dir:-$repo/target}/release/crius-kata-agent"
fi
[[ -x "$agent" ]] || die "agent binary $agent missing"

# Modules, in load order (dependencies first, via modules.dep).
wanted=(virtio_pci virtio_mmio virtio_console virtio_net virtio_blk
        vmw_vsock_virtio_transport 9pnet_virtio 9p virtiofs overlay virtio_balloon)
# Modules common workloads expect (a privileged container that builds a
# bridge, a tun device, NAT rules): in the image but loaded only when the
# kernel asks (request_module through busybox modprobe), so boot stays as
# fast as without them. Deliberately short; see handlers/kata/README.md.
on_demand=(bridge br_netfilter veth tun dummy macvlan vxlan
           ip_tables iptable_filter iptable_nat xt_conntrack xt_MASQUERADE
           nf_tables nft_chain_nat nft_compat)

stamp_of() {
    {
        echo "kernel $kver"; sha256sum "$bzimage" "$busybox" "${runtimes[@]}" "$agent" "$0" "$here/init"
        ldd "${runtimes[@]}" "$agent" | awk '/=>/ {print $3}' | sort -u | xargs -r sha256sum
        echo "${wanted[*]} / ${on_demand[*]} / $compress"
    } | sha256sum | cut -d' ' -f1
}
stamp="$(stamp_of)"
if ((force == 0)) && [[ -f "$out/stamp" && "$(cat "$out/stamp")" == "$stamp" \
      && -f "$out/vmlinux" && -f "$out/initramfs.cpio.gz" ]]; then
    say "guest image in $out is up to date ($kver)"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# --- kernel: extract the ELF vmlinux from the bzImage ------------------------
# The bzImage embeds the compressed kernel after a setup stub; find each
# candidate compression header and keep the first one that decompresses to
# an ELF image (the approach of the kernel's scripts/extract-vmlinux).
extract_vmlinux() {
    local img="$1" dst="$2" magic tool off
    for pair in 'FD377A585A00:xz -dc' '1F8B0800:gzip -dc' '28B52FFD:zstd -dc' '5D000000:lzma -dc'; do
        magic="${pair%%:*}"; tool="${pair#*:}"
        command -v "${tool%% *}" >/dev/null || continue
        local pattern
        pattern="$(echo "$magic" | sed 's/\(..\)/\\x\1/g')"
        for off in $(LC_ALL=C grep -obUaP "$pattern" "$img" | cut -d: -f1); do
            tail -c +"$((off + 1))" "$img" | $tool >"$dst" 2>/dev/null || true
            if [[ "$(head -c4 "$dst" | od -An -tx1 | tr -d ' \n')" == 7f454c46 ]]; then
                return 0
            fi
        done
    done
    return 1
}
say "extracting vmlinux from $bzimage"
extract_vmlinux "$bzimage" "$work/vmlinux" || die "could not extract an ELF kernel from $bzimage"

# --- initramfs ---------------------------------------------------------------
root="$work/root"
# Merged /usr, as on the host: one copy of each library, reachable under
# /lib and /usr/lib alike.
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,etc,newroot,usr/bin,usr/sbin,usr/lib/modules,usr/lib64}
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
chmod 1777 "$root/tmp"

install -m0755 "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [[ "$applet" == busybox ]] && continue
    ln -sf busybox "$root/bin/$applet"
done

# Binaries and the shared libraries they need (glibc, libseccomp…).
copy_with_libs() {
    local bin="$1" dst="$2"
    install -D -m0755 "$bin" "$root$dst"
    for lib in $(ldd "$bin" | awk '/=>/ {print $3} /^[ \t]*\/lib/ {print $1}' | sort -u); do
        [[ -f "$lib" ]] || continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}
for rt in "${runtimes[@]}"; do copy_with_libs "$rt" "$rt"; done
copy_with_libs "$agent" /sbin/crius-kata-agent
# Symbols only cost boot time (the initramfs is unpacked under TCG; 2 MB
# of the agent's 9): a panic still prints its message and location.
if command -v strip >/dev/null; then strip --strip-all "$root/sbin/crius-kata-agent"; fi

# Modules: resolve dependencies from modules.dep, deepest first.
declare -A seen=()
order=()
resolve() {
    local name="$1" line path deps dep
    line="$(grep -E "(^|/)${name}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -n1)" \
        || die "module $name not in $moddir/modules.dep"
    path="${line%%:*}"
    [[ -n "${seen[$path]:-}" ]] && return 0
    deps="${line#*:}"
    # modules.dep lists all (transitive) deps; load them in reverse order.
    for dep in $(echo "$deps" | tr ' ' '\n' | tac); do
        [[ -n "$dep" && -z "${seen[$dep]:-}" ]] || continue
        seen[$dep]=1; order+=("$dep")
    done
    seen[$path]=1; order+=("$path")
}
for m in "${wanted[@]}"; do resolve "$m"; done
boot_count=${#order[@]}
for m in "${on_demand[@]}"; do resolve "$m"; done
# Install every module uncompressed (busybox insmod/modprobe read plain
# .ko); the first $boot_count are loaded by /init, the rest on demand.
: >"$root/etc/modules.order"
mkdir -p "$root/lib/modules/$kver"
modules_dep="$root/lib/modules/$kver/modules.dep"
: >"$modules_dep"
mkdir -p "$root/etc/modprobe.d"
i=0
for path in "${order[@]}"; do
    plain="${path%.xz}"
    case "$path" in
        *.ko) install -D -m0644 "$moddir/$path" "$root/lib/modules/$kver/$path" ;;
        *.ko.xz) install -D -m0644 "$moddir/$path" "$root/lib/modules/$kver/$path"; xz -d "$root/lib/modules/$kver/$path" ;;
        *) die "unsupported module file $path" ;;
    esac
    if ((i < boot_count)); then echo "$plain" >>"$root/etc/modules.order"; fi
    i=$((i + 1))
    line="$(grep -E "^${path//./\\.}:" "$moddir/modules.dep")"
    deps="$(echo "${line#*:}" | sed 's/\.xz\b//g')"
    echo "$plain:$deps" >>"$modules_dep"
    # The kernel asks for aliases (rtnl-link-bridge, net-pf-…); busybox
    # reads them from modprobe.d.
    name="$(basename "$plain" .ko)"
    awk -v n="$name" -v u="${name//-/_}" '$1 == "alias" && ($3 == n || $3 == u) {print}' \
        "$moddir/modules.alias" >>"$root/etc/modprobe.d/crius-aliases.conf"
done
ln -sf ../bin/busybox "$root/sbin/modprobe"
echo "$kver" >"$root/etc/kernel-release"
echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
echo "root:x:0:" >"$root/etc/group"

install -m0755 "$here/init" "$root/init"
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3

say "packing initramfs ($(du -sh "$root" | cut -f1) unpacked, $compress, $boot_count modules loaded at boot, $(( ${#order[@]} - boot_count )) on demand, $(basename -a "${runtimes[@]}" | paste -sd,))"
find "$root" -exec touch -h -d @0 {} +
case "$compress" in
    lz4) pack() { lz4 -l -9 -q -c; } ;;
    gzip) pack() { gzip -n -6; } ;;
    none) pack() { cat; } ;;
esac
(cd "$root" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null -o -H newc --reproducible --quiet) | pack >"$work/initramfs.cpio.gz"

install -m0644 "$work/vmlinux" "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
install -m0644 "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz.tmp" && mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "$kver" >"$out/kernel-release"
echo "$stamp" >"$out/stamp"
say "wrote $out/vmlinux ($(du -h "$out/vmlinux" | cut -f1)) and $out/initramfs.cpio.gz ($(du -h "$out/initramfs.cpio.gz" | cut -f1)) for $kver"
