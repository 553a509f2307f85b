"""``make vcan-soak``: the cloud link under real network faults, and real power loss, in the VM.

Both run inside the test VM (:mod:`tests.vm.machine`), whose kernel has netem and
ext4 on a virtio-blk disk. :mod:`tests.vm.soak.guest` is what runs in the guest;
:mod:`tests.vm.soak.powerloss` is the host's side of the power-loss loop (it SIGKILLs
QEMU itself); :mod:`tests.vm.soak.__main__` runs both and prints the summary.
"""
