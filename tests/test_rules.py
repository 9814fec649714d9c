import json

import pytest

from header_augment_core.rules import MAX_BODY_BYTES, InvalidAnswer, parse_answer, validate_entries


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
    with pytest.raises(InvalidAnswer, match=message):
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
        ("X-A", "v" * 8193, "value longer than 8192"),
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
    ],
)
def test_framing_headers_are_never_added(name):
    v = validate_entries([(name, "x")])
    assert v.headers == ()
    assert "framing or hop-by-hop" in v.rejected[0].reason


def test_limits_are_inclusive():
    v = validate_entries([("X-" + "a" * 254, "v" * 8192), ("X-Tab", "a\tb c~")])
    assert len(v.headers) == 2


def test_name_repeated_in_another_case_counts_once():
    v = parse_answer(b'{"X-Token": "first", "x-token": "second", "X-TOKEN": "third"}')
    assert v.headers == (("X-Token", "first"),)
    assert [r.reason for r in v.rejected] == ["repeats X-Token", "repeats X-Token"]


def test_at_most_64_headers():
    v = validate_entries([(f"X-{i}", "v") for i in range(70)])
    assert len(v.headers) == 64
    assert len(v.rejected) == 6
    assert all("more than 64" in r.reason for r in v.rejected)


def test_rejected_names_are_safe_to_log():
    v = validate_entries([("X-A\r\nInjected", "v"), ("N" * 1000 + " ", "v")])
    for rejected in v.rejected:
        assert "\r" not in rejected.name and "\n" not in rejected.name
        assert len(rejected.name) <= 64


def test_rejections_never_carry_values():
    secret = "Bearer very-secret"
    v = validate_entries([("Host", secret), ("X-A", secret + "\n"), ("Bad Name", secret)])
    assert secret not in repr(v.rejected)


def test_nested_objects_are_reported_as_objects():
    v = parse_answer(json.dumps({"X-A": {"k": "v"}, "X-B": [1]}).encode())
    assert reasons(v) == {"X-A": "value is a JSON object, not a string", "X-B": "value is a JSON array, not a string"}


def test_body_limit_is_one_mebibyte():
    assert MAX_BODY_BYTES == 1 << 20
