"""The providers file in a running mitmdump: a file written in several steps is never applied half-written."""

import threading

from conftest import client_for, values_of
from servers import wait_until


def test_half_written_file_never_sends_the_token_elsewhere(mitmdump, provider, upstream, tmp_path):
    """Written in two steps (an entry first without its hosts line), the file was loaded half-written and 70
    requests carried the token to a host it was not meant for before the second write."""
    provider.answer({"Authorization": "Bearer SECRET-TOKEN"})
    path = tmp_path / "providers.yaml"
    path.write_text(f"- name: api\n  url: {provider.url}\n  hosts: localhost\n")
    m = mitmdump("--set", f"header_providers_file={path}")
    m.wait_for("api .*headers in use: Authorization")
    elsewhere = f"http://127.0.0.1:{upstream.port}/"  # not a host the file names, in either step
    with client_for(m.proxy) as client:
        refused = threading.Event()
        mark = m.mark()

        def watch() -> None:
            m.wait_for(r"provider 1 \(api\): hosts: required.*keeping the previous", start=mark)
            refused.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        path.write_text(f"- name: api\n  url: {provider.url}\n")  # step one: the entry, without its hosts yet
        sent = 0
        while watcher.is_alive():  # until the proxy has settled on step one (and refused it), keep asking
            assert values_of(client.get(elsewhere), "Authorization") == []
            sent += 1
        assert refused.is_set() and sent > 0
        mark = m.mark()
        path.write_text(f"- name: api\n  url: {provider.url}\n  hosts: 127.0.0.1:{upstream.port}\n")  # step two
        m.wait_for("header_providers_file .* changed: 1 provider", start=mark)
        wait_until(
            lambda: values_of(client.get(elsewhere), "Authorization") == ["Bearer SECRET-TOKEN"], what="new hosts"
        )
    m.stop()
    assert "SECRET-TOKEN" not in m.output
