import json

import pytest

from header_augment_core.failures import Failed
from header_augment_core.rules import (
    MAX_BODY_BYTES,
    MAX_LINE_BYTES,
    MAX_TOTAL_BYTES,
    parse_answer,
    validate_entries,
)


def names(validated):
    return [name for name, _ in validated.headers]


def reasons(validated):
    return {r.name: r.reason for r in validated.rejected}


def test_valid_answer_keeps_order():
    v = parse_answer(b'{"Authorization": "Bearer x", "X-Tenant": "acme"}')
    assert v.headers == (("Authorization", "Bearer x"), ("X-Tenant", "acme"))
    assert v.rejected == ()


def test_empty_object_means_no_headers():
    assert parse_answer(b"{}").headers == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not JSON"),
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "JSON array, not an object"),
        (b'"s"', "JSON string, not an object"),
        (b"null", "JSON null, not an object"),
        (b"3", "JSON number, not an object"),
        (b"[" * 100000, "not JSON"),
    ],
)
def test_unusable_bodies(body, message):
    with pytest.raises(Failed, match=message):
        parse_answer(body)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("Bad Name", "v", "not an HTTP token"),
        ("X-A:", "v", "not an HTTP token"),
        (":authority", "v", "not an HTTP token"),
        ("", "v", "not an HTTP token"),
        ("X-" + "a" * 300, "v", "name longer than 256"),
        ("X-A", 1, "JSON number"),
        ("X-A", None, "JSON null"),
        ("X-A", True, "JSON boolean"),
        ("X-A", "a\r\nX-B: c", "visible ASCII"),
        ("X-A", "a\nb", "visible ASCII"),
        ("X-A", "a\x00b", "visible ASCII"),
        ("X-A", "é", "visible ASCII"),
        ("X-A", "\x7f", "visible ASCII"),
        ("X-A", "v" * (MAX_LINE_BYTES - 6), "header line longer than 8192 bytes"),
    ],
)
def test_invalid_entries_are_dropped_with_a_reason(name, value, reason):
    v = validate_entries([(name, value), ("X-Ok", "fine")])
    assert names(v) == ["X-Ok"]
    assert len(v.rejected) == 1
    assert reason in v.rejected[0].reason


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "content-length",
        "Transfer-Encoding",
        "CONNECTION",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Upgrade",
        "HTTP2-Settings",
        "Proxy-Authenticate",
        "Expect",
        "Max-Forwards",
        "Content-Encoding",
        "Content-Type",
        "Content-Range",
    ],
)
def test_framing_hop_by_hop_and_body_headers_are_never_added(name):
    v = validate_entries([(name, "x")])
    assert v.headers == ()
    assert "framing, hop-by-hop or body header" in v.rejected[0].reason


def test_limits_are_inclusive():
    name = "X-" + "a" * 254
    v = validate_entries([(name, "v" * (MAX_LINE_BYTES - 4 - len(name))), ("X-Tab", "a\tb c~")])
    assert len(v.headers) == 2


def test_total_size_of_an_answer_is_bounded():
    """64 headers of 8 KiB each made every request fail at nginx (400) and over HTTP/2 (502)."""
    big = {f"X-Big-{i}": "v" * 8000 for i in range(64)}
    with pytest.raises(Failed) as e:
        parse_answer(json.dumps(big).encode())
    assert e.value.reason_class == "size" and f"over the limit of {MAX_TOTAL_BYTES}" in e.value.reason
    fits = {f"X-{i}": "v" * 1000 for i in range(MAX_TOTAL_BYTES // 1010)}
    assert len(parse_answer(json.dumps(fits).encode()).headers) == len(fits)


def test_name_repeated_in_another_case_counts_once():
    v = parse_answer(b'{"X-Token": "first", "x-token": "second", "X-TOKEN": "third"}')
    assert v.headers == (("X-Token", "first"),)
    assert [r.reason for r in v.rejected] == ["repeats X-Token", "repeats X-Token"]


def test_at_most_64_headers():
    v = validate_entries([(f"X-{i}", "v") for i in range(70)])
    assert len(v.headers) == 64
    assert v.rejected_count == 6
    assert all("more than 64" in r.reason for r in v.rejected)


def test_only_valid_short_names_are_ever_shown():
    """A provider key `Authorization: Bearer <token>` was echoed in the dropped-header warning."""
    v = validate_entries([("Authorization: Bearer s3cr3t", "v"), ("N" * 300, "v"), ("X-Shown", 1)])
    assert [r.name for r in v.rejected] == ["(an invalid name)", "(an invalid name)", "X-Shown"]


def test_rejections_are_summarised_in_one_bounded_line():
    """45,000 invalid entries were logged one warning each, which stalled the proxy."""
    v = validate_entries([(f"X-{i}", i) for i in range(45_000)])
    assert v.rejected_count == 45_000 and len(v.rejected) == 5
    line = v.rejections()
    assert line.startswith("dropped 45000 entries (X-0: value is a JSON number, not a string;")
    assert line.endswith("; and 44995 more)") and len(line) < 400


def test_rejections_never_carry_values():
    secret = "Bearer very-secret"
    v = validate_entries([("Host", secret), ("X-A", secret + "\n"), ("Bad Name", secret)])
    assert secret not in repr(v.rejected)


def test_nested_objects_are_reported_as_objects():
    v = parse_answer(json.dumps({"X-A": {"k": "v"}, "X-B": [1]}).encode())
    assert reasons(v) == {"X-A": "value is a JSON object, not a string", "X-B": "value is a JSON array, not a string"}


def test_body_limit_is_one_mebibyte():
    assert MAX_BODY_BYTES == 1 << 20
