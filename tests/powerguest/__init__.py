"""A ppc64le guest under QEMU that runs kvmppc on real POWER kernels; see harness.py."""
