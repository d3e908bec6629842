"""Guests described in the user's own terms, turned into a policy :class:`CheckRequest`.

* :mod:`.qemu_argv` — a ``qemu-system-ppc64`` command line, read with QEMU 7.2's own option
  syntax (QemuOpts and keyval, softmmu/vl.c);
* :mod:`.domain_xml` — a libvirt domain XML, turned into the command line libvirt 9.0 builds
  from it (src/qemu/qemu_command.c), then read as above.

Both are pure: they take text and return a :class:`~kvmppc.inputs.qemu_argv.Translation`, or
raise :class:`~kvmppc.errors.UsageError` naming the bad option.
"""

from kvmppc.inputs.qemu_argv import Translation, split_command_line, translate_argv

__all__ = ["Translation", "split_command_line", "translate_argv"]
