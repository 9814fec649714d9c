"""header-augment: a mitmproxy addon that adds headers fetched from a header provider to proxied requests.

The modules here know nothing of mitmproxy's event loop; `addon/header_augment.py` is the thin layer that does.
"""
