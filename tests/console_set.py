"""Test helper script: lets a test type a console command into a running mitmdump.

A request to http://console.test/<command words, URL-encoded> runs that command the way mitmproxy's console and
mitmweb do (`CommandManager.execute`), and answers 200 with the result or 400 with the error.
"""

import urllib.parse

from mitmproxy import ctx, exceptions, http


class ConsoleSet:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.pretty_host != "console.test":
            return
        command = urllib.parse.unquote(flow.request.path.lstrip("/"))
        try:
            result = ctx.master.commands.execute(command)
        except exceptions.CommandError as e:
            flow.response = http.Response.make(400, str(e))
        else:
            flow.response = http.Response.make(200, "" if result is None else str(result))


addons = [ConsoleSet()]
