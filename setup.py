"""Only here because cffi's build hook is a setuptools keyword; metadata is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["kvmppc/_ioctl_build.py:ffibuilder"])
