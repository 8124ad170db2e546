#!/usr/bin/env python3
"""A WHEP viewer on aiortc (PyPI), with a plain HTTP POST: a client Chorus did not write.

Offers to receive one audio and one video (recvonly), POSTs the offer to a WHEP endpoint,
prints one JSON line with the result, then one line a second with what it decoded: video
frames, their size and the mean colour of the picture's left part, audio frames and their
loudness (RMS of the decoded samples). Ends when stdin closes, SIGTERM comes or --seconds
pass, with a DELETE of the session.

    view.py URL [--token T] [--seconds N]
"""

import argparse
import asyncio
import json
import math
import signal
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

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


class Seen:
    def __init__(self):
        self.video = 0
        self.size = None
        self.color = None
        self.audio = 0
        self.rms = 0.0


async def watch_video(track, seen):
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        seen.video += 1
        seen.size = [frame.width, frame.height]
        if seen.video % 10 == 1:
            rgb = frame.reformat(format="rgb24")
            plane = rgb.planes[0]
            stride, w, h = plane.line_size, frame.width, frame.height
            data = bytes(plane)
            total, n = [0, 0, 0], 0
            for y in range(h // 10, h * 3 // 10):
                row = y * stride
                for x in range(w // 20, w * 3 // 20):
                    i = row + 3 * x
                    total[0] += data[i]
                    total[1] += data[i + 1]
                    total[2] += data[i + 2]
                    n += 1
            seen.color = [round(c / n) for c in total] if n else None


async def watch_audio(track, seen):
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        seen.audio += 1
        raw = bytes(frame.planes[0])
        count = len(raw) // 2
        if count and frame.format.name.startswith("s16"):
            samples = struct.unpack(f"<{count}h", raw[: count * 2])
            seen.rms = math.sqrt(sum(s * s for s in samples) / count)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--token")
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    seen = Seen()
    tasks = []

    @pc.on("track")
    def on_track(track):
        watch = watch_video if track.kind == "video" else watch_audio
        tasks.append(asyncio.ensure_future(watch(track, seen)))

    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())

    headers = {"Content-Type": "application/sdp"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    loop = asyncio.get_running_loop()
    status, response_headers, body = await loop.run_in_executor(
        None, http, "POST", args.url, pc.localDescription.sdp.encode(), headers
    )
    lower = {k.lower(): v for k, v in response_headers.items()}
    location = lower.get("location")
    emit(event="posted", status=status, location=location, contentType=lower.get("content-type"), body=body if status != 201 else None)
    if status != 201:
        await pc.close()
        return 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    resource = urllib.parse.urljoin(args.url, location)

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        loop.add_reader(sys.stdin, lambda: stop.set() if not sys.stdin.readline() else None)
    except (PermissionError, ValueError, OSError):
        pass  # stdin is a file (such as /dev/null): --seconds and SIGTERM only
    deadline = loop.time() + args.seconds
    while not stop.is_set() and loop.time() < deadline:
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
        emit(event="stats", state=pc.connectionState, video=seen.video, size=seen.size, color=seen.color, audio=seen.audio, rms=round(seen.rms, 1))
    status, _, body = await loop.run_in_executor(None, http, "DELETE", resource, None, {})
    emit(event="deleted", status=status)
    for task in tasks:
        task.cancel()
    await pc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
