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
import math
import struct
import sys

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from common import delete, emit, post_offer, stop_event


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

    loop = asyncio.get_running_loop()
    status, resource, body = await post_offer(args.url, pc.localDescription.sdp, args.token)
    if status != 201:
        await pc.close()
        return 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    stop = stop_event()
    deadline = loop.time() + args.seconds
    while not stop.is_set() and loop.time() < deadline:
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
        emit(event="stats", state=pc.connectionState, video=seen.video, size=seen.size, color=seen.color, audio=seen.audio, rms=round(seen.rms, 1))
    await delete(resource)
    for task in tasks:
        task.cancel()
    await pc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
