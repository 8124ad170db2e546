"""What the WHIP publisher and the WHEP viewer share: loopback-only ICE, the HTTP exchange
with the endpoint, the session's end, and the JSON lines the tests read."""

import asyncio
import json
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request

import aioice.ice

# Loopback only: the tests run in a network namespace where lo is the only interface.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def http(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def emit(**fields):
    print(json.dumps(fields), flush=True)


async def post_offer(url, sdp, token):
    """POSTs the offer, prints the "posted" line; returns the status, the session's
    resource URL (None without a Location) and the body."""
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    loop = asyncio.get_running_loop()
    status, response_headers, body = await loop.run_in_executor(None, http, "POST", url, sdp.encode(), headers)
    lower = {k.lower(): v for k, v in response_headers.items()}
    location = lower.get("location")
    emit(event="posted", status=status, location=location, contentType=lower.get("content-type"), body=body if status != 201 else None)
    return status, urllib.parse.urljoin(url, location) if location else None, body


def stop_event():
    """Set by SIGTERM or by stdin closing (when stdin is not a plain file)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        loop.add_reader(sys.stdin, lambda: stop.set() if not sys.stdin.readline() else None)
    except (PermissionError, ValueError, OSError):
        pass  # stdin is a file (such as /dev/null): --seconds and SIGTERM only
    return stop


async def delete(resource):
    """Ends the session and prints the "deleted" line."""
    loop = asyncio.get_running_loop()
    status, _, _ = await loop.run_in_executor(None, http, "DELETE", resource, None, {})
    emit(event="deleted", status=status)
