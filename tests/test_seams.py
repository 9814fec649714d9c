"""The private or undocumented names of mitmproxy that the addon reads, each exercised as the addon uses it, so that a
mitmproxy release that renames or reshapes one fails here by name instead of somewhere downstream (all checked
against mitmproxy 12.3.1). httpx and httpcore are used through their public API only (http_exchange._PoolTransport).
"""

import pytest
from mitmproxy import exceptions, flowfilter, optmanager

from header_augment_core import options as addon_options
from header_augment_core.entries import searches_hosts


def manager() -> optmanager.OptManager:
    opts = optmanager.OptManager()
    opts.add_option("header_flag", bool, False, "a bool")
    opts.add_option("header_text", str, "", "a string")
    return opts


def test_deferred_set_values_are_unconverted_strings():
    opts = optmanager.OptManager()
    opts.set("header_later=1", "header_later=2", "header_flag", defer=True)
    assert isinstance(opts.deferred["header_later"], optmanager._UnconvertedStrings)
    assert opts.deferred["header_later"].val == ["1", "2"]
    assert opts.deferred["header_flag"].val == []


def test_declared_options_and_their_conversion():
    opts = manager()
    flag, text = opts._options["header_flag"], opts._options["header_text"]
    assert isinstance(flag, optmanager._Option) and (flag.typespec, text.typespec) == (bool, str)
    assert opts._parse_setval(flag, []) is True
    assert opts._parse_setval(flag, ["false"]) is False
    assert opts._parse_setval(text, ["x"]) == "x"
    with pytest.raises(exceptions.OptionsError):
        opts._parse_setval(flag, ["maybe"])
    with pytest.raises(exceptions.OptionsError):
        opts._parse_setval(text, ["x", "y"])


def test_check_deferred_takes_out_what_mitmproxy_would_refuse():
    """The seams together, as `load()` uses them: --set values deferred before the script declared its options; a
    bad and an unknown one are taken out, a good one and another addon's stay."""
    opts = optmanager.OptManager()
    opts.set("header_flag=maybe", "header_text=fine", "header_unknown=1", "other_option=1", defer=True)
    opts.add_option("header_flag", bool, False, "a bool")
    opts.add_option("header_text", str, "", "a string")
    addon_options.check_deferred(opts)
    assert set(opts.deferred) == {"header_text", "other_option"}


@pytest.mark.parametrize(
    ("expression", "codes"),
    [
        ("~d example.com", {"d"}),
        ("example.com", {"u"}),  # a bare word
        ("~q & !~hq x", {"q", "hq"}),
        ("~s | (~u a & ~h b)", {"s", "u", "h"}),
    ],
)
def test_compiled_filters_show_their_codes_and_children(expression, codes):
    def walk(node):
        found = {node.code} if hasattr(node, "code") else set()
        for child in getattr(node, "lst", None) or ([node.itm] if hasattr(node, "itm") else []):
            found |= walk(child)
        return found

    compiled = flowfilter.parse(expression)
    assert walk(compiled) == codes
    assert searches_hosts(compiled) == bool(codes & {"d", "h", "hq", "u"})
