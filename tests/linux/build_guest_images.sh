#!/usr/bin/env bash
# Builds, from an unpacked distribution kernel package, the two images a real-Linux test boots:
#   OUT/initramfs.cpio.gz  busybox-static plus the kernel's own xen-blkfront module (and ext4's
#                          modules where ext4 is not built in), whose /init loads them, waits for
#                          /dev/xvda, mounts it and switch_roots to it, as a distribution boots;
#   OUT/root.img           an ext4 image made with `mke2fs -d` (no host mount) from busybox-static
#                          and an /sbin/init that proves from inside the guest where it runs
#                          (hypervisor type, CPUs, the root's driver), writes /proof, syncs, with
#                          xenkvm.net=ADDRESS/PREFIX,PEER loads the kernel's xen-netfront, pings PEER
#                          (with xenkvm.tcp, exchanges 512 KiB with it each way over TCP), prints the marker XENKVM-LINUX-ROOT-OK and
#                          powers off;
#   OUT/boot.img           the same root plus what a Xen user's image holds for pvgrub2:
#                          /boot/vmlinuz (the kernel as shipped), /boot/initrd.img (the initramfs)
#                          and /boot/grub/grub.cfg, which boots them with root=/dev/xvda.
# Usage: build_guest_images.sh KERNEL_TREE OUT   (KERNEL_TREE: dpkg-deb -x of linux-image-*)
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin  # mke2fs, under a test runner's minimal PATH

tree=$1
out=$2
# Debian 13 and later ship modules under usr/lib (merged /usr), earlier ones under lib.
modules_root=$(ls -d "$tree"/lib/modules/*/ "$tree"/usr/lib/modules/*/ 2>/dev/null | head -n 1 || true)
[ -n "$modules_root" ] || { echo "build_guest_images: $tree has no lib/modules/VERSION or usr/lib/modules/VERSION" >&2; exit 1; }
busybox=$(command -v busybox || true)
[ -n "$busybox" ] && file -L "$busybox" | grep -q 'statically linked' \
  || { echo "build_guest_images: a static busybox is needed (apt-get install busybox-static)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/initramfs"/{bin,dev,proc,sys,newroot,lib/modules} "$out"

# A module's file by name (xen-blkfront and xen_blkfront are one module), decompressed into the
# initramfs; its dependencies first. modules.dep is made by depmod at install time, so the
# dependencies come from each module's own modinfo (depends=).
declare -A added=()
load_order=()
add_module() {
  local name=${1//_/-}
  [ -n "${added[$name]:-}" ] && return
  added[$name]=1
  local pattern=${name//-/[-_]}
  local file
  file=$(find "$modules_root" -regextype posix-extended -regex ".*/${pattern}\.ko(\.(xz|zst|gz))?" | head -n 1)
  [ -n "$file" ] || { echo "build_guest_images: no module $name in $modules_root" >&2; exit 1; }
  local plain="$module_dir/$name.ko"
  case "$file" in
    *.xz) xz -dc "$file" > "$plain" ;;
    *.zst) zstd -qdc "$file" > "$plain" ;;
    *.gz) gzip -dc "$file" > "$plain" ;;
    *) cp "$file" "$plain" ;;
  esac
  local depends softdeps
  depends=$(tr '\0' '\n' < "$plain" | sed -n 's/^depends=//p' | head -n 1)
  # Soft dependencies name aliases (ext4: "pre: crypto-crc32c"), which the kernel would have
  # modprobe load at mount time: load their modules first (built-in ones need nothing).
  softdeps=$(tr '\0' '\n' < "$plain" | sed -n 's/^softdep=pre: *//p' | head -n 1)
  local dependency
  for dependency in ${depends//,/ }; do add_module "$dependency"; done
  for dependency in $softdeps; do
    local provider
    provider=$(module_for_alias "$dependency")
    [ -n "$provider" ] && add_module "$provider"
  done
  load_order+=("$name")
}
# The module whose modinfo has alias=ALIAS, searched among the crypto modules (where soft
# dependencies point); nothing if none (built in: no module file carries it).
module_for_alias() {
  local file
  for file in $(find "$modules_root/kernel/crypto" "$modules_root/kernel/arch/x86/crypto" -name '*.ko*' 2>/dev/null); do
    local text
    case "$file" in
      *.xz) text=$(xz -dc "$file" | tr '\0' '\n') ;;
      *.zst) text=$(zstd -qdc "$file" | tr '\0' '\n') ;;
      *.gz) text=$(gzip -dc "$file" | tr '\0' '\n') ;;
      *) text=$(tr '\0' '\n' < "$file") ;;
    esac
    if grep -qx "alias=$1" <<< "$text"; then
      local name
      name=$(basename "$file")
      name=${name%%.ko*}
      echo "$name"
      return 0
    fi
  done
}
builtin() {  # whether kernel/PATH.ko is built in
  grep -qx "kernel/$1.ko" "$modules_root/modules.builtin" 2>/dev/null
}
module_dir=$work/initramfs/lib/modules
builtin drivers/block/xen-blkfront || add_module xen-blkfront
builtin fs/ext4/ext4 || add_module ext4
initramfs_order=("${load_order[@]}")

# The network driver goes into the root, which loads it only when asked to (xenkvm.net=).
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,lib/modules}
module_dir=$root/lib/modules
load_order=()
builtin drivers/net/xen-netfront || add_module xen-netfront
net_order=("${load_order[@]}")
load_order=("${initramfs_order[@]}")

cp "$busybox" "$work/initramfs/bin/busybox"
cat > "$work/initramfs/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "initramfs: loading ${load_order[*]:-nothing (built in)}"
for module in ${load_order[*]:-}; do
  insmod /lib/modules/\$module.ko || { echo "initramfs: insmod \$module failed"; poweroff -f; }
done
tries=0
while [ ! -b /dev/xvda ] && [ \$tries -lt 100 ]; do sleep 0.1; tries=\$((tries + 1)); done
[ -b /dev/xvda ] || { echo "initramfs: no /dev/xvda"; poweroff -f; }
mount -t ext4 /dev/xvda /newroot || { echo "initramfs: mounting /dev/xvda failed"; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
chmod 755 "$work/initramfs/init"
(cd "$work/initramfs" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/initramfs.cpio.gz"

cp "$busybox" "$root/bin/busybox"
echo "${net_order[*]:-}" > "$root/lib/modules/net-order"
cat > "$root/sbin/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "xenkvm-root: hypervisor=$(cat /sys/hypervisor/type 2>/dev/null)"
echo "xenkvm-root: cpus=$(nproc) online=$(cat /sys/devices/system/cpu/online)"
# The last CPU really runs code: a process pinned to it reports where it ran (/proc/self/stat field 39).
last_cpu=$(($(nproc) - 1))
echo "xenkvm-root: ran-on-cpu$last_cpu=$(taskset -c "$last_cpu" awk '{print $39}' /proc/self/stat)"
echo "xenkvm-root: root=$(awk '$2 == "/" && $1 != "rootfs" {print $1 " " $3}' /proc/mounts)"
echo "xenkvm-root: root-driver=$(basename "$(readlink /sys/block/xvda/device/driver)")"
echo "written by the guest on $(uname -r)" > /proof
sync
# xenkvm.net=ADDRESS/PREFIX,PEER: the vif (xen-netfront) gets ADDRESS and pings PEER. With
# xenkvm.tcp, 512 KiB of random bytes go to PEER over HTTP from busybox's httpd on port 8080
# (sendfile: large TCP segments, as a server's are), their SHA-256 printed for the host to
# compare; then what PEER sends to port 5556 is taken and its size and SHA-256 printed.
net=$(sed -n 's/.*xenkvm\.net=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$net" ]; then
  for module in $(cat /lib/modules/net-order); do insmod /lib/modules/$module.ko; done
  tries=0
  while [ ! -e /sys/class/net/eth0 ] && [ $tries -lt 100 ]; do sleep 0.1; tries=$((tries + 1)); done
  ip addr add "${net%%,*}" dev eth0
  ip link set eth0 up
  echo "xenkvm-root: net-driver=$(basename "$(readlink /sys/class/net/eth0/device/driver)")"
  if ping -c 3 -W 10 "${net#*,}" > /tmp/ping 2>&1; then
    echo "xenkvm-root: ping=ok"
  else
    echo "xenkvm-root: ping=failed: $(cat /tmp/ping)"
  fi
fi
if [ -n "$net" ] && grep -q xenkvm.tcp /proc/cmdline; then
  mkdir -p /tmp/www
  dd if=/dev/urandom of=/tmp/www/blob bs=1024 count=512 2>/dev/null
  echo "xenkvm-root: blob-sha256=$(sha256sum /tmp/www/blob | cut -d' ' -f1)"
  httpd -p 8080 -h /tmp/www
  # Busybox's nc: stdin's end half-closes, the peer's ends it.
  if timeout 120 nc -l -p 5556 < /dev/null > /tmp/in; then
    echo "xenkvm-root: blob-received=$(wc -c < /tmp/in) $(sha256sum /tmp/in | cut -d' ' -f1)"
  fi
fi
# xenkvm.serve=MIB (tests/bench/xen_net_guest_benchmark.py): MIB MiB of zeros served over HTTP on
# port 8080, whatever comes to port 5557 taken and dropped, port 5558 echoed, until powered off.
serve=$(sed -n 's/.*xenkvm\.serve=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$net" ] && [ -n "$serve" ]; then
  mkdir -p /srv && mount -t tmpfs -o size=$((serve + 8))m tmpfs /srv
  dd if=/dev/zero of=/srv/blob bs=1M count="$serve" 2>/dev/null
  httpd -p 8080 -h /srv
  (while :; do nc -l -p 5557 < /dev/null > /dev/null; done) &
  (while :; do nc -l -p 5558 -e cat; done) &
  echo "xenkvm-root: serving ${serve} MiB"
fi
echo "XENKVM-LINUX-ROOT-OK"
if grep -q xenkvm.stay /proc/cmdline; then
  # Stay up until asked to power off: the kernel's Xen shutdown watcher (control/shutdown in
  # XenStore) runs /sbin/poweroff, whose busybox signals init (SIGUSR2).
  trap 'echo "xenkvm-root: shutdown asked"; sync; poweroff -f' USR2 TERM INT
  echo "XENKVM-LINUX-WAITING"
  # A vif plugged later gets xenkvm.net's address, as a distribution's hotplug scripts would give it.
  # Each vif the kernel's xenbus finds is reported once bound to its driver (or not yet), so a
  # test that waits for a replugged vif can tell a probe that never came from one that failed.
  reported=""
  while :; do
    for device in /sys/bus/xen/devices/vif-*; do
      [ -e "$device" ] || continue
      driver=$(basename "$(readlink "$device/driver" 2>/dev/null)" 2>/dev/null)
      case " $reported " in *" ${device##*/}:${driver:-none} "*) continue ;; esac
      reported="$reported ${device##*/}:${driver:-none}"
      echo "xenkvm-root: xenbus ${device##*/} driver=${driver:-none}"
    done
    for dev in /sys/class/net/eth*; do
      [ -n "$net" ] && [ -e "$dev" ] || continue
      if ! ip -4 addr show dev "${dev##*/}" | grep -q inet; then
        ip addr add "${net%%,*}" dev "${dev##*/}" && ip link set "${dev##*/}" up && echo "xenkvm-root: configured ${dev##*/}"
      fi
    done
    sleep 1 & wait $!
  done
fi
poweroff -f
INIT
chmod 755 "$root/sbin/init"
ln -s /bin/busybox "$root/sbin/poweroff"  # the kernel's poweroff_cmd
rm -f "$out/root.img" "$out/boot.img"
mke2fs -q -t ext4 -d "$root" "$out/root.img" 64M >/dev/null

vmlinuz=$(ls "$tree"/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)
[ -n "$vmlinuz" ] || { echo "build_guest_images: $tree has no boot/vmlinuz-VERSION" >&2; exit 1; }
mkdir -p "$root/boot/grub"
cp "$vmlinuz" "$root/boot/vmlinuz"
cp "$out/initramfs.cpio.gz" "$root/boot/initrd.img"
cat > "$root/boot/grub/grub.cfg" <<'GRUB'
set timeout=0
menuentry 'Debian (xenkvm test image)' {
  echo 'Loading the kernel from the guest disk ...'
  linux /boot/vmlinuz root=/dev/xvda console=hvc0
  echo 'Loading the initial ramdisk ...'
  initrd /boot/initrd.img
}
GRUB
mke2fs -q -t ext4 -d "$root" "$out/boot.img" 128M >/dev/null
echo "$out"
