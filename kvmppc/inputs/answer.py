"""One answer for a guest given in the user's terms: yes (0), no (1), cannot judge (3).

Shared by ``kvmppc check -- ...``/``--domain``, the libvirt hook, ``kvmppc audit`` and the
daemon's ``POST /v1/check`` body (:func:`request_from_body`).  Pure: the probe and any
backings are passed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvmppc.errors import UsageError
from kvmppc.inputs.domain_xml import HostMemory, translate_domain
from kvmppc.inputs.qemu_argv import Translation, translate_argv
from kvmppc.model import ProbeResult
from kvmppc.policy import Backing, CheckResult, check
from kvmppc.render import check_json, render_check

EXIT_YES = 0
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_CANNOT_JUDGE = 3
MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Answer:
    """A translation and, when it could be judged, the policy's result."""

    translation: Translation
    result: CheckResult | None

    @property
    def verdict(self) -> str:
        if self.result is None:
            return "cannot judge"
        return "yes" if self.result.ok else "no"

    @property
    def exit_code(self) -> int:
        if self.result is None:
            return EXIT_CANNOT_JUDGE
        return EXIT_YES if self.result.ok else EXIT_NO

    @property
    def first_error(self) -> str | None:
        if self.result is None or not self.result.errors:
            return None
        return self.result.errors[0].message

    @property
    def changes(self) -> tuple[str, ...]:
        """The suggestions that make the guest start (the policy re-checked each)."""
        if self.result is None or self.result.advice is None:
            return ()
        return tuple(s.change for s in self.result.advice.suggestions if s.ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.verdict,
            "input": self.translation.to_dict(),
            "check": check_json(self.result) if self.result else None,
        }

    def render(self) -> str:
        t = self.translation
        lines = []
        if "domain" in t.extra:
            lines.append(f"libvirt domain '{t.extra['domain']}', as QEMU's command line:")
        else:
            lines.append("QEMU command line:")
        lines.append("  " + " ".join(t.argv))
        for note in t.notes:
            lines.append(f"  note: {note}")
        if t.ignored:
            lines.append("  ignored (no bearing on page sizes or backing): " + "; ".join(
                t.ignored))
        if self.result is None:
            lines.append("cannot judge: these options would bear on the answer and kvmppc does"
                         " not model them:")
            lines += [f"  - {reason}" for reason in t.cannot_judge]
        else:
            lines.append(render_check(self.result))
        return "\n".join(lines)


def judge(translation: Translation, probe: ProbeResult,
          backings: Sequence[Backing] | None = None, *,
          resolve: Callable[[str], Backing] | None = None) -> Answer:
    if translation.request is None:
        return Answer(translation, None)
    return Answer(translation, check(probe, translation.request, backings, resolve=resolve))


def request_from_body(content_type: str, body: bytes, host: HostMemory,
                      qemu_version: str | None = None) -> Translation:
    """``POST /v1/check``: ``application/json`` ``{"argv": [...]}`` or ``application/xml``
    (a libvirt domain).  Raises :class:`UsageError` (answer 400) with what is wrong; a
    translation with ``request`` None is the cannot-judge answer (the daemon answers it with
    ``{"answer": "cannot judge", ...}``).  ``qemu_version``: the release whose options (and
    ``pseries`` alias, for a domain) read the body; None: 7.2's."""
    if len(body) > MAX_BODY_BYTES:
        raise UsageError(f"request body of {len(body)} bytes: more than {MAX_BODY_BYTES}")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"body is not JSON: {exc}") from None
        if not isinstance(data, dict) or set(data) != {"argv"}:
            raise UsageError('body must be {"argv": ["qemu-system-ppc64", ...]}')
        argv = data["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise UsageError('"argv" must be a list of strings, the program first')
        return translate_argv(argv, qemu_version)
    if media in ("application/xml", "text/xml"):
        return translate_domain(body, host, qemu_version=qemu_version)
    raise UsageError(
        f"Content-Type {content_type!r}: send application/json ({{\"argv\": [...]}}) or"
        " application/xml (a libvirt domain)"
    )
