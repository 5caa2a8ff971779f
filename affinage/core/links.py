"""Links in text, and the link policy: which domains an answer may send a customer to.

One pattern finds links everywhere (answer metrics, the quote screen, the streaming link guard); a domain allows
itself and its subdomains, ``*.example.com`` only the subdomains. The policy is the operator's list when one is set,
else the hosts the knowledge base itself links to (``allowed_domains``): an answer may send a customer where the
documentation does, nowhere else. Pure functions, so the policy is tested apart from what applies it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

LINK = re.compile(r"(?:https?:)?//[^\s<>\"')\]]+|\b(?:[a-z0-9-]+\.)+(?:com|net|org|io|co|info|biz|example)\b(?:/[^\s<>\"')\]]*)?",
                  re.IGNORECASE)
_DOMAIN = re.compile(r"(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}")


def links_in(text: str) -> list[str]:
    """The links in ``text``, without the sentence punctuation that follows them."""
    return [link.rstrip(".,;:!?") for link in LINK.findall(text)]


def host_of(link: str) -> str:
    """The lowercase host a link points to, without scheme, port, path or a leading ``www.``."""
    host = re.sub(r"^(?:https?:)?//", "", link.strip(), flags=re.IGNORECASE).split("/")[0].split(":")[0].lower()
    return host.removeprefix("www.")


def check_domain(domain: str) -> str:
    """The domain, lowercased; a ValueError naming it when it is not a domain name (``*.`` prefix allowed)."""
    folded = domain.strip().lower()
    if not _DOMAIN.fullmatch(folded):
        raise ValueError(f"{domain!r} is not a domain name (expected e.g. 'example.com' or '*.example.com')")
    return folded


def domain_allowed(host: str, allowed: list[str] | tuple[str, ...] | None) -> bool:
    """Whether ``host`` is one of ``allowed`` or under one; ``*.d`` allows d's subdomains but not d itself. ``None``
    (a setting not yet resolved against a knowledge base by ``allowed_domains``) allows nothing: the strict side."""
    host = host.lower().removeprefix("www.")
    for domain in allowed or ():
        if domain.startswith("*."):
            if host.endswith(domain[1:]):
                return True
        elif host == domain or host.endswith("." + domain):
            return True
    return False


def link_domains(texts: Iterable[str]) -> tuple[str, ...]:
    """The hosts ``texts`` link to, sorted and without repeats: the default policy from the knowledge base's chunks."""
    return tuple(sorted({host for text in texts for host in map(host_of, links_in(text)) if host}))


def allowed_domains(configured: list[str] | None, kb_texts: Iterable[str]) -> tuple[str, ...]:
    """The link policy in force: the operator's domains when set (``[]``: no links at all), else (``None``) the hosts
    the knowledge base links to."""
    return tuple(configured) if configured is not None else link_domains(kb_texts)


def off_policy_links(text: str, allowed: list[str] | tuple[str, ...] | None) -> list[str]:
    """The links in ``text`` whose host the policy does not allow."""
    return [link for link in links_in(text) if not domain_allowed(host_of(link), allowed)]
