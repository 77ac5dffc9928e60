"""The tables of github.com/distribution/reference (``reference_test.go``, ``normalize_test.go``), ported.

The Go package is the grammar's reference implementation; these are its own table-driven cases,
restated for our one entry point ``parse_reference`` (which is ``ParseNormalizedNamed``: it
normalises familiar names). Cases of Go's raw ``Parse`` are given the answer
``ParseNormalizedNamed`` gives for the same input (``test_com`` -> ``docker.io/library/test_com``,
``foo/foo_bar.com`` -> Docker Hub namespace ``foo``), since that is the function whose behaviour
ours must match.

Where we disagree with the Go implementation, on purpose:

1. ``registry-1.docker.io`` and ``registry.hub.docker.com`` fold to ``docker.io`` (Go folds only
   ``index.docker.io``). They are Docker Hub's real API hosts and appear in pull logs and mirror
   configuration; an advisory about ``checkmarx/kics`` must match a pull from either.
2. Registry hosts that are hosts by spelling (a '.', a ':' or ``localhost``) are lowercased
   (``GHCR.IO/x`` == ``ghcr.io/x``); Go keeps their case. DNS names are case-insensitive and a
   match must not depend on spelling. A first component that is a domain only because it holds
   an uppercase letter (``LOCALDOMAIN/debian``) keeps its case as Go does: lowercased it would
   re-parse as a Docker Hub namespace.
3. ``sha512`` (and ``sha384``) digests are accepted. Go's test refuses ``sha512`` only because
   the test binary does not import ``crypto/sha512``; both are registered OCI algorithms.
4. Digest hex in upper case is accepted and lowercased (``parse_digest``); go-digest refuses it.
   Registry APIs and people both write it; the canonical form we store is lowercase.
5. ``ParseAnyReference`` (a bare 64-hex id or ``sha256:...`` as a digest reference) is not ported:
   nothing we read names an image by id alone. A bare 64-hex name is refused, as
   ``ParseNormalizedNamed`` refuses it.
6. Familiar form of ``docker.io/<64 hex>`` keeps its host (``docker.io/library/<64 hex>``): Go's ``FamiliarName`` drops it,
   giving a string its own parser refuses; ours must round-trip.
7. Go's ``WithName``/``WithTag``/``WithDigest``/``Match``/JSON ``Field`` tests cover API we do not
   have; the grammar parts they exercise are in the tables below.
"""

import pytest

from digestguard.errors import InputError
from digestguard.reference import parse_reference

F = "sha256:" + "f" * 64
DB = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
HUB = "docker.io/library/"

# reference_test.go TestReferenceParse, valid rows: (input, name, tag, digest)
PARSE_VALID = [
    ("test_com", HUB + "test_com", None, None),
    ("test.com:tag", HUB + "test.com", "tag", None),
    ("test.com:5000", HUB + "test.com", "5000", None),
    ("test.com/repo:tag", "test.com/repo", "tag", None),
    ("test:5000/repo", "test:5000/repo", None, None),
    ("test:5000/repo:tag", "test:5000/repo", "tag", None),
    (f"test:5000/repo@{F}", "test:5000/repo", None, F),
    (f"test:5000/repo:tag@{F}", "test:5000/repo", "tag", F),
    ("lowercase:Uppercase", HUB + "lowercase", "Uppercase", None),
    ("a/" * 127 + "a:tag-puts-this-over-max", "docker.io/" + "a/" * 127 + "a", "tag-puts-this-over-max", None),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com/bar/baz/quux", None, None),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com/bar/baz/quux", "some-long-tag", None),
    ("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io/test.example.com/my-app", "test.example.com", None),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage", "xn--n3h.com", None),
    (f"xn--7o8h.com/myimage:xn--7o8h.com@{F}", "xn--7o8h.com/myimage", "xn--7o8h.com", F),
    ("foo_bar.com:8080", HUB + "foo_bar.com", "8080", None),
    ("foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com", "8080", None),
    ("192.168.1.1", HUB + "192.168.1.1", None, None),
    ("192.168.1.1:tag", HUB + "192.168.1.1", "tag", None),
    ("192.168.1.1:5000", HUB + "192.168.1.1", "5000", None),
    ("192.168.1.1/repo", "192.168.1.1/repo", None, None),
    ("192.168.1.1:5000/repo", "192.168.1.1:5000/repo", None, None),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000/repo", "5050", None),
    ("[2001:db8::1]/repo", "[2001:db8::1]/repo", None, None),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]/repo", "tag", None),
    ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000/repo", None, None),
    ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000/repo", "tag", None),
    (f"[2001:db8::1]:5000/repo@{F}", "[2001:db8::1]:5000/repo", None, F),
    (f"[2001:db8::1]:5000/repo:tag@{F}", "[2001:db8::1]:5000/repo", "tag", F),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000/repo", None, None),
    ("[::1]:5000/repo", "[::1]:5000/repo", None, None),
    ("example.com/" + "a" * 255 + ":tag", "example.com/" + "a" * 255, "tag", None),
]

# reference_test.go TestReferenceParse + TestWithNameFailure, error rows: (input, the part the message names)
PARSE_INVALID = [
    ("", "empty"),
    (":justtag", "missing repository name"),
    (f"@{F}", "missing repository name"),
    ("repo@sha256:" + "f" * 34, "invalid digest"),
    ("validname@invaliddigest:" + "f" * 64, "invalid digest"),
    ("Uppercase:tag", "must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "must be lowercase"),
    ("domain/" + "a" * 256 + ":tag", "path longer than 255"),
    ("example.com/" + "a" * 256, "path longer than 255"),
    ("aa/asdf$$^/aa", "invalid path component 'asdf$$^'"),
    ("[2001:db8::1]", "invalid tag"),
    ("[2001:db8::1]:5000", "invalid path component"),
    ("[2001:db8::1]:tag", "invalid path component"),
    ("[fe80::1%eth0]:5000/repo", "invalid registry host"),
    ("[fe80::1%@invalidzone]:5000/repo", "invalid digest"),
    ("example.com/repo:tag@", "invalid digest"),
]


@pytest.mark.parametrize("text,name,tag,digest", PARSE_VALID)
def test_go_parse_valid(text, name, tag, digest):
    ref = parse_reference(text)
    assert (ref.name, ref.tag, ref.digest) == (name, tag, digest)
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar()) == ref


@pytest.mark.parametrize("text,part", PARSE_INVALID)
def test_go_parse_invalid_names_the_wrong_part(text, part):
    with pytest.raises(InputError) as e:
        parse_reference(text, source="Dockerfile:7")
    assert "Dockerfile:7" in str(e.value)
    assert part in str(e.value)


# normalize_test.go TestValidateReferenceName + TestValidateRemoteName
NORMALIZE_VALID = [
    "docker/docker", "library/debian", "debian", "localhost/library/debian", "localhost/debian",
    "LOCALDOMAIN/library/debian", "LOCALDOMAIN/debian", "docker.io/docker/docker", "docker.io/library/debian",
    "docker.io/debian", "index.docker.io/docker/docker", "index.docker.io/library/debian",
    "index.docker.io/debian", "127.0.0.1:5000/docker/docker", "127.0.0.1:5000/library/debian",
    "127.0.0.1:5000/debian", "192.168.0.1", "192.168.0.1:80", "192.168.0.1:8/debian",
    "192.168.0.2:25000/debian", "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
    "[fc00::1]:5000/docker", "[fc00::1]:5000/docker/docker", "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
    "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
    "Docker/docker", "DOCKER/docker",
    "docker-rules/docker", "docker---rules/docker", "doc/docker", "d/docker", "jess/t", "dock__er/docker",
]
NORMALIZE_INVALID = [
    ("https://github.com/docker/docker", "invalid"),
    ("docker/Docker", "must be lowercase"),
    ("-docker", "invalid path component '-docker'"),
    ("-docker/docker", "invalid path component '-docker'"),
    ("-docker.io/docker/docker", "invalid registry host '-docker.io'"),
    ("docker///docker", "invalid path component ''"),
    ("docker.io/docker/Docker", "must be lowercase"),
    ("docker.io/docker///docker", "invalid path component ''"),
    ("[fc00::1]", "invalid tag"),
    ("[fc00::1]:5000", "invalid path component"),
    ("fc00::1:5000/debian", "invalid registry host"),
    ("[fe80::1%eth0]:5000/debian", "invalid registry host"),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "invalid registry host"),
    ("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "image id"),
    ("docker-/docker", "invalid path component 'docker-'"),
    ("-docker-/docker", "invalid path component '-docker-'"),
    ("____/____", "invalid path component '____'"),
    ("_docker/_docker", "invalid path component '_docker'"),
    # '.' makes the first component a domain (Go's splitDockerDomain), so that is the part named
    ("dock..er/docker", "invalid registry host 'dock..er'"),
    ("dock_.er/docker", "invalid registry host 'dock_.er'"),
    ("dock-.er/docker", "invalid registry host 'dock-.er'"),
    ("docker/", "invalid path component ''"),
    ("this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_" * 4 + "x/docker",
     "path longer than 255"),
    ("-foo", "invalid path component '-foo'"),  # TestInvalidReferenceComponents
    ("busybox:-foo", "invalid tag '-foo'"),
    ("busybox@foo", "invalid digest"),
]


@pytest.mark.parametrize("text", NORMALIZE_VALID)
def test_go_normalize_valid(text):
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar()) == ref


@pytest.mark.parametrize("text,part", NORMALIZE_INVALID)
def test_go_normalize_invalid(text, part):
    with pytest.raises(InputError) as e:
        parse_reference(text)
    assert part in str(e.value)


def test_single_name_at_the_limit_counts_library_prefix():
    """Go checks ``len(path)`` after normalisation: ``library/`` + 247 characters is the longest."""
    assert parse_reference("a" * 247).repository == "library/" + "a" * 247
    with pytest.raises(InputError, match="path longer than 255"):
        parse_reference("a" * 248)
    # the domain does not count (the old parser counted registry + path)
    long_host = "r" * 60 + ".example.com"
    assert parse_reference(f"{long_host}/" + "b" * 255).registry == long_host


# normalize_test.go TestParseRepositoryInfo: (familiar, full, ambiguous, domain, remote)
REPOSITORY_INFO = [
    ("localhost/fooo", "localhost/fooo", "localhost/fooo", "localhost", "fooo"),
    ("localhost/fooo/bar", "localhost/fooo/bar", "localhost/fooo/bar", "localhost", "fooo/bar"),
    ("LOCALDOMAIN/fooo", "LOCALDOMAIN/fooo", "LOCALDOMAIN/fooo", "LOCALDOMAIN", "fooo"),
    ("LOCALDOMAIN/fooo/bar", "LOCALDOMAIN/fooo/bar", "LOCALDOMAIN/fooo/bar", "LOCALDOMAIN", "fooo/bar"),
    ("fooo/bar", "docker.io/fooo/bar", "index.docker.io/fooo/bar", "docker.io", "fooo/bar"),
    ("ubuntu", "docker.io/library/ubuntu", "library/ubuntu", "docker.io", "library/ubuntu"),
    ("nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu", "", "docker.io", "nonlibrary/ubuntu"),
    ("other/library", "docker.io/other/library", "", "docker.io", "other/library"),
    ("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000/private/moonbase", "", "127.0.0.1:8000", "private/moonbase"),
    ("127.0.0.1:8000/privatebase", "127.0.0.1:8000/privatebase", "", "127.0.0.1:8000", "privatebase"),
    ("example.com/private/moonbase", "example.com/private/moonbase", "", "example.com", "private/moonbase"),
    ("example.com/privatebase", "example.com/privatebase", "", "example.com", "privatebase"),
    ("example.com:8000/private/moonbase", "example.com:8000/private/moonbase", "", "example.com:8000",
     "private/moonbase"),
    ("example.com:8000/privatebasee", "example.com:8000/privatebasee", "", "example.com:8000", "privatebasee"),
    ("ubuntu-12.04-base", "docker.io/library/ubuntu-12.04-base", "index.docker.io/library/ubuntu-12.04-base",
     "docker.io", "library/ubuntu-12.04-base"),
    ("foo", "docker.io/library/foo", "docker.io/foo", "docker.io", "library/foo"),
    ("library/foo/bar", "docker.io/library/foo/bar", "", "docker.io", "library/foo/bar"),
    ("store/foo/bar", "docker.io/store/foo/bar", "", "docker.io", "store/foo/bar"),
    ("Foo/bar", "Foo/bar", "", "Foo", "bar"),
    ("FOO/bar", "FOO/bar", "", "FOO", "bar"),
]


@pytest.mark.parametrize("familiar,full,ambiguous,domain,remote", REPOSITORY_INFO)
def test_go_repository_info(familiar, full, ambiguous, domain, remote):
    for text in filter(None, (familiar, full, ambiguous)):
        ref = parse_reference(text)
        assert ref.familiar_name == familiar, text
        assert ref.name == full, text
        assert (ref.registry, ref.repository) == (domain, remote), text


def test_go_tag_and_digest():
    short = "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
    ref = parse_reference(short)
    assert str(ref) == "docker.io/library/" + short
    assert ref.familiar() == short


# normalize_test.go TestParseAnyReference (the name rows; see disagreement 5)
ANY_REFERENCE = [
    ("redis", "docker.io/library/redis"),
    ("redis:latest", "docker.io/library/redis:latest"),
    ("docker.io/library/redis:latest", "docker.io/library/redis:latest"),
    (f"redis@{DB}", f"docker.io/library/redis@{DB}"),
    (f"docker.io/library/redis@{DB}", f"docker.io/library/redis@{DB}"),
    ("dmcgowan/myapp", "docker.io/dmcgowan/myapp"),
    ("dmcgowan/myapp:latest", "docker.io/dmcgowan/myapp:latest"),
    ("docker.io/mcgowan/myapp:latest", "docker.io/mcgowan/myapp:latest"),
    (f"dmcgowan/myapp@{DB}", f"docker.io/dmcgowan/myapp@{DB}"),
    (f"docker.io/dmcgowan/myapp@{DB}", f"docker.io/dmcgowan/myapp@{DB}"),
    (DB[7:-1], "docker.io/library/" + DB[7:-1]),  # 63 hex: a name
    ("dbcc1", "docker.io/library/dbcc1"),
]


@pytest.mark.parametrize("text,canonical", ANY_REFERENCE)
def test_go_any_reference_names(text, canonical):
    assert str(parse_reference(text)) == canonical


# normalize_test.go TestNormalizedSplitHostname: (input, domain, path)
SPLIT_HOSTNAME = [
    ("test.com/foo", "test.com", "foo"), ("test_com/foo", "docker.io", "test_com/foo"),
    ("docker/migrator", "docker.io", "docker/migrator"), ("test.com:8080/foo", "test.com:8080", "foo"),
    ("test-com:8080/foo", "test-com:8080", "foo"), ("foo", "docker.io", "library/foo"),
    ("xn--n3h.com/foo", "xn--n3h.com", "foo"), ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
    ("docker.io/foo", "docker.io", "library/foo"), ("docker.io/library/foo", "docker.io", "library/foo"),
    ("docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
]


@pytest.mark.parametrize("text,domain,path", SPLIT_HOSTNAME)
def test_go_split_hostname(text, domain, path):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository) == (domain, path)


# normalize_test.go TestParseDockerRef: a tag and a digest together keep only the digest
DOCKER_REF = [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:latest", "docker.io/library/busybox:latest"),
    ("busybox@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582",
     "docker.io/library/busybox@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox:latest", "docker.io/library/busybox:latest"),
    ("library/busybox:latest", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
    ("gcr.io/library/busybox", "gcr.io/library/busybox:latest"),
    ("gcr.io/library/busybox:latest@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582",
     "gcr.io/library/busybox@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582"),
]


@pytest.mark.parametrize("text,expected", DOCKER_REF)
def test_go_docker_ref(text, expected):
    ref = parse_reference(text)
    out = f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.effective_tag}"
    assert out == expected
    assert parse_reference(out).name == ref.name


def test_disagreements_are_what_the_docstring_says():
    assert parse_reference("registry-1.docker.io/library/alpine").name == "docker.io/library/alpine"
    assert parse_reference("registry.hub.docker.com/alpine").name == "docker.io/library/alpine"
    assert parse_reference("GHCR.IO/a/b").registry == "ghcr.io"
    assert parse_reference("validname@sha512:" + "f" * 128).digest == "sha512:" + "f" * 128
    assert parse_reference("a@sha256:" + "F" * 64).digest == F
    hexname = "docker.io/" + "1a" * 32
    assert parse_reference(parse_reference(hexname).familiar()).repository == "library/" + "1a" * 32
