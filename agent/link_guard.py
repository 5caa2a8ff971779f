"""The streaming link guard: no customer sees a link outside the link policy (``affinage.core.links``).

Fed the answer piece by piece, like ``agent.guard.PromptLeakGuard``. A link never holds whitespace or any of
``<>"')]`` (``LINK``), so once such a character follows a run of text, every link in that run is whole and is judged;
only the run still being written is held back, since any word may yet grow into a bare domain ("evil" + ".com"): one
word of delay at most, none after a space. An off-policy link is replaced by ``REMOVED`` rather than by nothing, so
that the sentence around it does not read as if it said something else ("reset it at ."), and the customer knows a
link was withheld without learning where it pointed.
"""

from __future__ import annotations

import re

from affinage.core.links import LINK, domain_allowed, host_of
from agent.guard import PromptLeakGuard

REMOVED = "[link removed]"
LEAK = "system prompt"  # what OutputGuard.removed names when the prompt-leak guard fired
_OPEN_RUN = re.compile(r"[^\s<>\"')\]]*\Z")  # the text still being written: it may yet be or become a link


class LinkGuard:
    """Feed it the answer as it is shown; it passes allowed links whole, removes the others and remembers them."""

    def __init__(self, allowed: list[str] | tuple[str, ...]):
        self.allowed = tuple(allowed)
        self.pending = ""
        self.removed: list[str] = []

    def _judge(self, text: str) -> str:
        kept, at = [], 0
        for match in LINK.finditer(text):
            link = match.group().rstrip(".,;:!?")  # sentence punctuation after a link stays in the sentence
            if not domain_allowed(host_of(link), self.allowed):
                kept += [text[at:match.start()], REMOVED]
                at = match.start() + len(link)
                self.removed.append(link)
        return "".join(kept) + text[at:]

    def feed(self, piece: str) -> str:
        """The text that may be shown now: everything up to the run still being written, its links judged."""
        self.pending += piece
        cut = _OPEN_RUN.search(self.pending).start()
        done, self.pending = self.pending[:cut], self.pending[cut:]
        return self._judge(done)

    def finish(self) -> str:
        """The rest, judged, once the answer ended."""
        done, self.pending = self.pending, ""
        return self._judge(done)


class OutputGuard:
    """Both guards over one stream: the prompt-leak guard first, on the model's own words, so that a code inside a
    link is still caught as a leak (the link guard would otherwise hide it behind ``REMOVED``) and a marker never
    breaks a run of the prompt's words; then the link guard, on exactly what the leak guard lets through."""

    def __init__(self, system_prompt: str, question: str, allowed: list[str] | tuple[str, ...]):
        self.leak = PromptLeakGuard(system_prompt, question)
        self.links = LinkGuard(allowed)
        self.shown = ""

    @property
    def leaked(self) -> bool:
        return self.leak.leaked

    @property
    def removed(self) -> list[str]:
        """What the customer did not see: ``LEAK`` when the prompt-leak guard fired, then each removed link."""
        return ([LEAK] if self.leak.leaked else []) + self.links.removed

    def _show(self, text: str) -> str:
        self.shown += text
        return text

    def feed(self, piece: str) -> str:
        return self._show(self.links.feed(self.leak.feed(piece)))

    def finish(self) -> str:
        return self._show(self.links.feed(self.leak.finish()) + self.links.finish())
