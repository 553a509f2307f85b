#!/bin/busybox sh
# PID 1 of touchpoint's test VM (tests/vm). Busybox only, until it chroots into the host's
# root: load the modules, mount the shares, bring up lo and vcan0..vcanN-1, run the command
# the host left in the control share, write its exit status there and power off.
# Kernel command line variables arrive as environment: TP_NVCAN (vcan count), TP_TTY (1: the
# command talks on the serial console, an interactive shell).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "touchpoint-vm: $*" > /dev/console; }
die() { say "$*"; poweroff -f; }
KV=$(uname -r)
grep -v '^#' /modules.txt | while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/$KV/$m.ko" || say "cannot load the kernel module $m"
done
O=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /ctl /lower /upper /newroot
mount -t 9p -o $O,cache=none ctl /ctl || die "cannot mount the control share"
# The host's root, read-only; an overlay with a tmpfs on top lets the guest write anywhere
# (apt caches, __pycache__, /etc) and forgets it all at power-off.
mount -t 9p -o $O,ro,cache=loose hostroot /lower || die "cannot mount the host's root"
R=/newroot
mount -t tmpfs -o size=50% upper /upper && mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay $R ||
  die "cannot mount the overlay on the host's root"
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
mount -t tmpfs run $R/run
mount -t tmpfs tmp $R/tmp
mkdir -p $R/run/vm-ctl && mount --move /ctl $R/run/vm-ctl
C=$R/run/vm-ctl
# Shares written through to the host: lines "tag path".
while read -r tag p; do
  [ -n "$tag" ] || continue
  mkdir -p "$R$p" && mount -t 9p -o $O,cache=mmap "$tag" "$R$p" || die "cannot mount $p"
done < $C/mounts
ip link set lo up
i=0
while [ $i -lt "${TP_NVCAN:-1}" ]; do
  ip link add dev vcan$i type vcan && ip link set vcan$i up || die "cannot create vcan$i"
  i=$((i + 1))
done
hostname touchpoint-vm
date +%s.%N > $C/started
if [ "${TP_TTY:-0}" = 1 ]; then
  setsid -c chroot $R /bin/bash /run/vm-ctl/cmd < /dev/ttyS0 > /dev/ttyS0 2>&1
else
  # stdout and stderr: the virtio-serial ports named out and err (no tty: no \r\n).
  OUT=/dev/null; ERR=/dev/null
  for p in /sys/class/virtio-ports/*; do
    n=$(cat $p/name); [ "$n" = out ] && OUT=/dev/${p##*/}; [ "$n" = err ] && ERR=/dev/${p##*/}
  done
  chroot $R /bin/bash /run/vm-ctl/cmd < /dev/null > $OUT 2> $ERR
fi
echo $? > $C/rc
sync
poweroff -f
