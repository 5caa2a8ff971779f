"""The link pattern and the link policy (pure functions)."""

import pytest

from affinage.core.links import (
    allowed_domains,
    check_domain,
    domain_allowed,
    host_of,
    link_domains,
    links_in,
    off_policy_links,
)


def test_links_are_found_without_trailing_punctuation():
    text = "See https://docs.python.org/3/faq/. Or www.evil-help.com, or //cdn.example/x!"
    assert links_in(text) == ["https://docs.python.org/3/faq/", "www.evil-help.com", "//cdn.example/x"]


def test_plain_prose_has_no_links():
    assert links_in("Use os.path.join() and str.format(); version 3.11 is current.") == []


@pytest.mark.parametrize("link, host", [
    ("https://WWW.Example.com:8080/a/b", "example.com"),
    ("http://help.example.com", "help.example.com"),
    ("//cdn.example/x", "cdn.example"),
    ("billing-portal.example/login", "billing-portal.example"),
])
def test_host_of(link, host):
    assert host_of(link) == host


def test_a_domain_allows_itself_and_its_subdomains_only():
    assert domain_allowed("example.com", ["example.com"])
    assert domain_allowed("help.example.com", ["example.com"])
    assert not domain_allowed("badexample.com", ["example.com"])
    assert not domain_allowed("example.com.evil.io", ["example.com"])
    assert not domain_allowed("example.com", [])


def test_a_wildcard_allows_subdomains_but_not_the_domain():
    assert domain_allowed("docs.example.com", ["*.example.com"])
    assert not domain_allowed("example.com", ["*.example.com"])


def test_off_policy_links_keeps_only_the_disallowed():
    text = "Read https://docs.python.org/3/ and then https://python-help.example/login."
    assert off_policy_links(text, ["python.org"]) == ["https://python-help.example/login"]
    assert off_policy_links(text, ["python.org", "python-help.example"]) == []


@pytest.mark.parametrize("bad", ["", "localhost", "http://example.com", "exa mple.com", "example.com/path", "-x.com"])
def test_check_domain_names_a_malformed_domain(bad):
    with pytest.raises(ValueError, match="is not a domain name"):
        check_domain(bad)


def test_check_domain_folds_case():
    assert check_domain(" Docs.Python.ORG ") == "docs.python.org"
    assert check_domain("*.example.com") == "*.example.com"


def test_the_knowledge_base_s_link_domains_are_its_hosts_once_each_in_order():
    texts = ["Status: https://Status.Lumendesk.com/x and www.lumendesk.com/legal.",
             "Mail abuse@lumendesk-mail.com or see https://status.lumendesk.com.", "No links here."]
    assert link_domains(texts) == ("lumendesk-mail.com", "lumendesk.com", "status.lumendesk.com")
    assert link_domains([]) == ()


def test_the_operator_s_list_wins_and_an_empty_one_allows_nothing():
    kb = ["See https://docs.example.com/a."]
    assert allowed_domains(None, kb) == ("docs.example.com",)  # unset: the knowledge base's own links
    assert allowed_domains([], kb) == ()  # []: no links at all
    assert allowed_domains(["python.org"], kb) == ("python.org",)


def test_an_unresolved_policy_allows_nothing():
    assert not domain_allowed("example.com", None)
    assert off_policy_links("see example.com", None) == ["example.com"]
