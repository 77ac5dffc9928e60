"""The reference parser: tricky cases from the distribution grammar, and no crash on any input."""

import pytest
from hypothesis import given, settings, strategies as st

from digestguard.errors import InputError
from digestguard.reference import is_digest, parse_digest, parse_reference, try_parse_reference

D = "sha256:" + "ab" * 32

CASES = [
    ("checkmarx/kics", "docker.io/checkmarx/kics", None, None),
    ("docker.io/checkmarx/kics", "docker.io/checkmarx/kics", None, None),
    ("index.docker.io/checkmarx/kics:latest", "docker.io/checkmarx/kics", "latest", None),
    ("registry-1.docker.io/checkmarx/kics:v2.1.20", "docker.io/checkmarx/kics", "v2.1.20", None),
    ("alpine", "docker.io/library/alpine", None, None),
    ("alpine:3.20", "docker.io/library/alpine", "3.20", None),
    ("library/alpine", "docker.io/library/alpine", None, None),
    (f"checkmarx/kics:v2.1.20@{D}", "docker.io/checkmarx/kics", "v2.1.20", D),
    (f"checkmarx/kics@{D}", "docker.io/checkmarx/kics", None, D),
    ("localhost:5000/team/app:1.0", "localhost:5000/team/app", "1.0", None),
    ("localhost/app", "localhost/app", None, None),
    ("127.0.0.1:5000/a/b/c:x", "127.0.0.1:5000/a/b/c", "x", None),
    ("ghcr.io/checkmarx/kics", "ghcr.io/checkmarx/kics", None, None),
    ("GHCR.IO/checkmarx/kics", "ghcr.io/checkmarx/kics", None, None),
    ("public.ecr.aws/aquasecurity/trivy:0.69.4", "public.ecr.aws/aquasecurity/trivy", "0.69.4", None),
    ("my-registry.example.com:443/a__b/c--d:t_1", "my-registry.example.com:443/a__b/c--d", "t_1", None),
    ("[::1]:5000/img:tag", "[::1]:5000/img", "tag", None),
]


@pytest.mark.parametrize("text,name,tag,digest", CASES)
def test_tricky_cases(text, name, tag, digest):
    ref = parse_reference(text)
    assert (ref.name, ref.tag, ref.digest) == (name, tag, digest)


@pytest.mark.parametrize("text", [
    "", "  ", "checkmarx/Kics", "checkmarx/KICS:latest", "checkmarx/kics:", "checkmarx/kics:-bad",
    "checkmarx/kics@sha256:abc", "checkmarx/kics@md5:" + "a" * 32, "a b", "checkmarx//kics", "/kics",
    "kics:" + "x" * 129, "host:port/x", "checkmarx/kics@" + D + "@" + D, "_x/y",
])
def test_invalid_references_are_refused_with_the_input_named(text):
    with pytest.raises(InputError) as e:
        parse_reference(text, source="Dockerfile:3")
    assert "Dockerfile:3" in str(e.value)


def test_familiar_and_pinning():
    ref = parse_reference("index.docker.io/library/alpine:3.20")
    assert ref.familiar() == "alpine:3.20"
    assert ref.with_digest(D).familiar() == f"alpine:3.20@{D}"
    assert ref.with_digest(D, keep_tag=False).familiar() == f"alpine@{D}"
    assert parse_reference("checkmarx/kics").effective_tag == "latest"


def test_digest_validation():
    assert parse_digest("sha256:" + "A" * 64) == "sha256:" + "a" * 64
    assert is_digest("sha512:" + "0" * 128)
    assert not is_digest("sha256:" + "0" * 63)
    assert not is_digest("sha256:" + "g" * 64)
    with pytest.raises(InputError, match="64 hex"):
        parse_digest("sha256:1234")


@settings(max_examples=600, deadline=None)
@given(st.text(max_size=80))
def test_no_crash_on_any_string(s):
    try:
        parse_reference(s)
    except InputError:
        pass


name_part = st.from_regex(r"\A[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,6})?\Z")
tags = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")


@settings(max_examples=300, deadline=None)
@given(st.lists(name_part, min_size=1, max_size=3), st.one_of(st.none(), tags),
       st.sampled_from(["", "docker.io/", "index.docker.io/", "registry-1.docker.io/", "ghcr.io/", "localhost:5000/"]))
def test_round_trip(parts, tag, host):
    text = host + "/".join(parts) + (f":{tag}" if tag else "")
    ref = parse_reference(text)
    again = parse_reference(str(ref))
    assert again == ref
    assert parse_reference(ref.familiar()) == ref
    first_is_host = host == "" and len(parts) > 1 and "." in parts[0]
    if host in ("", "docker.io/", "index.docker.io/", "registry-1.docker.io/") and not first_is_host:
        assert ref.registry == "docker.io"
    assert try_parse_reference(text) == ref


@settings(max_examples=300, deadline=None)
@given(st.lists(name_part, min_size=1, max_size=3), st.one_of(st.none(), tags),
       st.sampled_from(["", "docker.io/", "index.docker.io/"]))
def test_round_trip_under_library(parts, tag, host):
    """``library/foo/bar`` must never shorten to ``foo/bar`` (another image)."""
    text = host + "library/" + "/".join(parts) + (f":{tag}" if tag else "")
    ref = parse_reference(text)
    assert ref.repository == "library/" + "/".join(parts)
    assert parse_reference(ref.familiar()) == ref
    assert parse_reference(str(ref)) == ref
