#!/usr/bin/env python3
"""A WHIP publisher on aiortc (PyPI), with a plain HTTP POST: a client Chorus did not write.

Publishes a generated video (a moving colour bar over a solid colour, VP8) and a tone
(Opus) to a WHIP endpoint, prints one JSON line with the result of the POST, keeps
publishing until stdin closes, SIGTERM comes or --seconds pass, then DELETEs the session and
prints a second JSON line.

    publish.py URL [--token T] [--seconds N] [--srtp aes-cm|any] [--color R,G,B] [--codec vp8|h264]
        [--quiet]

SIGUSR1 switches the tone off and on (--quiet starts with it off).

--srtp aes-cm offers only SRTP_AES128_CM_SHA1_80, as ffmpeg's WHIP muxer does.
Only loopback candidates are gathered (aioice is told this machine has only 127.0.0.1).
"""

import argparse
import asyncio
import fractions
import math
import signal
import sys
import time

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import rtcdtlstransport

from common import delete, emit, post_offer, stop_event

WIDTH, HEIGHT, FPS = 320, 240, 20
RATE, FRAME_SAMPLES = 48000, 960  # 20 ms of 48 kHz audio


class ColourVideo(MediaStreamTrack):
    """A solid colour with a bright bar that moves one step a frame."""

    kind = "video"

    def __init__(self, rgb):
        super().__init__()
        r, g, b = rgb
        # BT.601 limited range.
        self.y = int(16 + 0.257 * r + 0.504 * g + 0.098 * b)
        self.u = int(128 - 0.148 * r - 0.291 * g + 0.439 * b)
        self.v = int(128 + 0.439 * r - 0.368 * g - 0.071 * b)
        self.count = 0
        self.start = None

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.count / FPS
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        bar = (self.count * 4) % WIDTH
        row = bytearray([self.y]) * WIDTH
        for x in range(bar, min(WIDTH, bar + 24)):
            row[x] = 235
        luma = bytes(row) * HEIGHT
        self._fill(frame.planes[0], luma, WIDTH, HEIGHT)
        self._fill(frame.planes[1], bytes([self.u]) * (WIDTH // 2 * HEIGHT // 2), WIDTH // 2, HEIGHT // 2)
        self._fill(frame.planes[2], bytes([self.v]) * (WIDTH // 2 * HEIGHT // 2), WIDTH // 2, HEIGHT // 2)
        frame.pts = self.count * (90000 // FPS)
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame

    @staticmethod
    def _fill(plane, data, width, height):
        stride = plane.line_size
        if stride == width:
            plane.update(data)
        else:
            padded = b"".join(data[y * width:(y + 1) * width] + bytes(stride - width) for y in range(height))
            plane.update(padded)


class Tone(MediaStreamTrack):
    """A 440 Hz tone at about -12 dBFS while `on`, else silence."""

    kind = "audio"

    def __init__(self, on=True):
        super().__init__()
        self.samples = 0
        self.start = None
        self.on = on

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        due = self.start + self.samples / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        amplitude = 8000 if self.on else 0
        pcm = bytearray()
        for i in range(FRAME_SAMPLES):
            v = int(amplitude * math.sin(2 * math.pi * 440 * (self.samples + i) / RATE))
            pcm += v.to_bytes(2, "little", signed=True)
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(bytes(pcm))
        frame.sample_rate = RATE
        frame.pts = self.samples
        frame.time_base = fractions.Fraction(1, RATE)
        self.samples += FRAME_SAMPLES
        return frame


def video_codecs(sdp):
    """The codec names of the answer's video section, in its order."""
    names, video = [], False
    for line in sdp.splitlines():
        if line.startswith("m="):
            video = line.startswith("m=video")
        elif video and line.startswith("a=rtpmap:"):
            names.append(line.split(" ", 1)[1].split("/")[0])
    return names


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--token")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--srtp", choices=["any", "aes-cm"], default="any")
    parser.add_argument("--color", default="40,70,200")
    parser.add_argument("--quiet", action="store_true", help="start silent; SIGUSR1 switches the tone on and off")
    parser.add_argument("--codec", choices=["vp8", "h264"], default="vp8", help="the video codec to offer (h264: as OBS and ffmpeg send)")
    parser.add_argument("--post-only", action="store_true", help="POST, print, and exit without connecting (a client that vanishes)")
    args = parser.parse_args()

    if args.srtp == "aes-cm":
        rtcdtlstransport.SRTP_PROFILES[:] = [rtcdtlstransport.SRTP_AES128_CM_SHA1_80]

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    states = []
    pc.on("connectionstatechange", lambda: states.append(pc.connectionState))
    tone = Tone(on=not args.quiet)
    pc.addTransceiver(tone, direction="sendonly")
    video = pc.addTransceiver(ColourVideo([int(c) for c in args.color.split(",")]), direction="sendonly")
    if args.codec == "h264":
        caps = RTCRtpSender.getCapabilities("video").codecs
        video.setCodecPreferences([c for c in caps if c.mimeType.lower() in ("video/h264", "video/rtx")])
    await pc.setLocalDescription(await pc.createOffer())

    loop = asyncio.get_running_loop()
    status, resource, body = await post_offer(args.url, pc.localDescription.sdp, args.token)
    if status != 201 or args.post_only:
        await pc.close()
        return 0 if status == 201 else 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    emit(event="answered", videoCodecs=video_codecs(body))

    stop = stop_event()

    def toggle():
        tone.on = not tone.on
        emit(event="tone", on=tone.on)

    loop.add_signal_handler(signal.SIGUSR1, toggle)
    deadline = loop.time() + args.seconds
    connected_said = False
    while not stop.is_set() and loop.time() < deadline:
        if not connected_said and pc.connectionState == "connected":
            emit(event="connected")
            connected_said = True
        if pc.connectionState in ("failed", "closed"):
            emit(event="failed", states=states)
            break
        try:
            await asyncio.wait_for(stop.wait(), 0.2)
        except asyncio.TimeoutError:
            pass
    await delete(resource)
    await pc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
