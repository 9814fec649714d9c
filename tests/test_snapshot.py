import math

from header_augment_core.snapshot import NOTHING, Merge, Snapshot, merge


def snap(*headers, max_stale=0.0, at=100.0):
    return Snapshot.build(list(headers), at, max_stale)


REQUEST = ((b"Host", b"example.com"), (b"x-token", b"client"), (b"Accept", b"*/*"))


def test_build_encodes_once():
    s = snap(("Authorization", "Bearer a"), ("X-Tenant", "acme"))
    assert s.fields == ((b"Authorization", b"Bearer a"), (b"X-Tenant", b"acme"))
    assert s.names == {b"authorization", b"x-tenant"}
    assert s.display_names == ("Authorization", "X-Tenant")


def test_replace_removes_every_existing_value_case_insensitively():
    s = snap(("X-Token", "ours"))
    fields, clashes = merge(REQUEST + ((b"X-TOKEN", b"again"),), s, Merge.REPLACE)
    assert fields == ((b"Host", b"example.com"), (b"Accept", b"*/*"), (b"X-Token", b"ours"))
    assert clashes == {b"x-token"}


def test_append_adds_after_the_clients():
    s = snap(("X-Token", "ours"))
    assert merge(REQUEST, s, Merge.APPEND) == (REQUEST + ((b"X-Token", b"ours"),), {b"x-token"})
    assert merge(REQUEST, snap(("X-New", "n")), Merge.APPEND) == (REQUEST + ((b"X-New", b"n"),), set())


def test_keep_adds_only_missing_names():
    s = snap(("X-Token", "ours"), ("X-New", "n"))
    assert merge(REQUEST, s, Merge.KEEP) == (REQUEST + ((b"X-New", b"n"),), {b"x-token"})
    assert merge(REQUEST, snap(("X-Token", "ours")), Merge.KEEP) == (None, {b"x-token"})
    assert merge(REQUEST, snap(("X-New", "n")), Merge.KEEP) == (REQUEST + ((b"X-New", b"n"),), set())


def test_empty_snapshot_changes_nothing():
    for mode in Merge:
        assert merge(REQUEST, snap(), mode) == (None, set())


def test_connection_header_cannot_name_our_headers():
    s = snap(("Authorization", "Bearer a"))
    request = ((b"Host", b"h"), (b"Connection", b"keep-alive, Authorization"), (b"connection", b"authorization"))
    fields, _ = merge(request, s, Merge.APPEND)
    assert fields == ((b"Host", b"h"), (b"Connection", b"keep-alive"), (b"Authorization", b"Bearer a"))


def test_connection_header_without_our_names_is_untouched():
    s = snap(("Authorization", "Bearer a"))
    request = ((b"Connection", b"close, X-Other"),)
    assert merge(request, s, Merge.REPLACE)[0][0] == (b"Connection", b"close, X-Other")


def test_lifetime_bounds_usability_too():
    token = Snapshot.build([("Authorization", "Bearer t")], 100, max_stale=0, lifetime=60)
    assert token.usable(159.9) and not token.usable(160)
    both = Snapshot.build([("A", "b")], 100, max_stale=30, lifetime=60)
    assert not both.usable(130)


def test_http2_requests_get_lower_case_names():
    """mitmproxy lower-cased our names for HTTP/2 and logged a line per header, on every request."""
    s = snap(("Authorization", "Bearer a"), ("X-Tenant", "t"))
    fields, _ = merge(((b"x-tenant", b"client"),), s, Merge.REPLACE, h2=True)
    assert fields == ((b"authorization", b"Bearer a"), (b"x-tenant", b"t"))
    assert s.display_names == ("Authorization", "X-Tenant") and s.summary == "added Authorization, X-Tenant"


def test_restamping_keeps_the_credentials_lifetime():
    token = Snapshot.build([("Authorization", "Bearer t")], 100, max_stale=0, lifetime=60)
    assert token.restamped(10).usable_until == 110
    assert token.restamped(0).usable_until == 160


def test_usability_and_max_stale():
    assert not NOTHING.usable(0) and not NOTHING.usable(math.inf)
    forever = snap(("A", "b"))
    assert forever.usable(1e12)
    short = snap(("A", "b"), max_stale=5, at=100)
    assert short.usable(104.9) and not short.usable(105)


def test_snapshots_are_immutable():
    s = snap(("A", "b"))
    try:
        s.fields = ()
    except AttributeError:
        pass
    else:
        raise AssertionError("a snapshot could be changed in place")


def test_headers_fetched_again_unchanged_keep_their_forms_and_only_their_times_are_new():
    """Most refreshes answer what they answered before: the forms made for answers (the costliest part of a build,
    most of a simulated fleet's CPU) are taken from the snapshot replaced, not made again."""
    headers = [("Authorization", "Bearer same-token-0001"), ("X-Tenant", "acme")]
    first = Snapshot.build(headers, 100.0, 60.0, lifetime=600.0)
    again = Snapshot.build(headers, 200.0, 60.0, lifetime=600.0, previous=first)
    assert again is not first and again.secrets is first.secrets and again.masks is first.masks
    assert (again.fetched_at, again.usable_until, again.expires_at) == (200.0, 260.0, 800.0)
    assert again.mask_values == first.mask_values and again.token == first.token
    assert again == Snapshot.build(headers, 200.0, 60.0, lifetime=600.0)  # what a build from nothing makes
    changed = Snapshot.build([("Authorization", "Bearer new-token-0002")], 300.0, 60.0, previous=again)
    assert changed.secrets is not first.secrets and b"new-token-0002" in dict(changed.secrets)
