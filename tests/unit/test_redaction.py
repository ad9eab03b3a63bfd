"""Credentials never leave kvmops in clear: URLs, libvirt URIs and text quoting them are redacted."""

from __future__ import annotations

import pytest

from reconciler.core import redaction

SECRET = "s3cr3tT0ken9"


@pytest.mark.parametrize("url, shown", [
    (f"https://deploy:{SECRET}@git.example.com/infra/vms.git", "https://deploy:***@git.example.com/infra/vms.git"),
    (f"https://{SECRET}@github.com/infra/vms.git", "https://***@github.com/infra/vms.git"),
    (f"https://git.example.com/vms.git?access_token={SECRET}&ref=main", "https://git.example.com/vms.git?access_token=***&ref=main"),
    (f"https://images.example.com/d.qcow2?X-Amz-Signature={SECRET}&X-Amz-Date=1", "https://images.example.com/d.qcow2?X-Amz-Signature=***&X-Amz-Date=1"),
    (f"http://h/i.raw?token={SECRET}", "http://h/i.raw?token=***"),
    (f"qemu+ssh://root:{SECRET}@hv1/system?keyfile=/root/.ssh/id", "qemu+ssh://root:***@hv1/system?keyfile=/root/.ssh/id"),
    (f"qemu+tcp://hv1/system?password={SECRET}", "qemu+tcp://hv1/system?password=***"),
])
def test_a_credential_in_a_url_is_masked_and_the_rest_is_kept(url, shown):
    """The password, a token given as the user name, and secret query values become ***; host, path and other parameters stay."""
    assert redaction.redact_url(url) == shown
    assert SECRET not in redaction.redact_text(f"fatal: unable to access '{url}/': Could not resolve host")


@pytest.mark.parametrize("url, shown", [
    (f"qemu+tcp://root:{SECRET}@[::1/system", "qemu+tcp://root:***@[::1/system"),
    (f"qemu+ssh://root:{SECRET}@[fe80::1%eth0]:x/system", "qemu+ssh://root:***@[fe80::1%eth0]:x/system"),
    (f"https://{SECRET}@[::1", "https://***@[::1"),
])
def test_a_credential_in_a_url_python_cannot_parse_is_masked_all_the_same(url, shown):
    """A Host's spec.uri is whatever the manifest says: one urllib refuses (a broken IPv6 address) still hides its password."""
    assert redaction.redact_url(url) == shown
    assert SECRET not in redaction.redact_text(f"cannot connect to {url}: internal error: Unable to parse URI {url}")


@pytest.mark.parametrize("url, shown", [
    (f"test:///default?password={SECRET}", "test:///default?password=***"),
    (f"qemu+unix:///system?socket=/run/l.sock&token={SECRET}", "qemu+unix:///system?socket=/run/l.sock&token=***"),
])
def test_a_uri_without_a_host_keeps_its_three_slashes_when_masked(url, shown):
    """Masking changes the secret only: ``test:///default`` is not shown as ``test:/default``."""
    assert redaction.redact_url(url) == shown


@pytest.mark.parametrize("url", [
    "qemu:///system", "test:///default", "ssh://git@git.example.com/infra/vms.git",
    "https://cloud.debian.org/images/d.qcow2?arch=amd64", "file:///srv/repo.git", "not a url at all",
])
def test_a_url_without_credentials_is_left_exactly_as_it_was(url):
    """Nothing to hide, nothing changed: a user name such as ssh's git is not a secret."""
    assert redaction.redact_url(url) == url
    assert redaction.redact_text(f"cannot reach {url}: refused") == f"cannot reach {url}: refused"


def test_every_string_inside_a_structure_is_redacted():
    """Dicts, lists and tuples are walked: a URL deep inside a /status document is masked too."""
    document = {"git": {"url": f"https://u:{SECRET}@h/r.git"}, "errors": [f"x https://h/?token={SECRET} y"], "n": 3,
                "pair": ("a", f"https://{SECRET}@h/")}
    assert SECRET not in repr(redaction.redact_value(document))
    assert redaction.redact_value(document)["n"] == 3
