"""A small closed-loop HTTP/1.1 load generator: N keep-alive connections, one request in flight each.

Raw asyncio streams with one pre-built request, so the client costs ~tens of microseconds a
request and leaves the 2 cores to the server being measured (httpx costs ~10x more).
Every response is kept as (start, latency, status, X-Model-Version), so a test can check
errors, percentiles and when the served version changed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np


@dataclass
class Sample:
    start: float  # seconds since the load began
    latency: float  # seconds
    status: int  # 0: the connection failed
    version: str | None
    body: bytes = b""


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]

    def summary(self) -> dict:
        latencies = np.array([s.latency for s in self.samples]) * 1e3
        ok = len(self.samples) - len(self.errors)
        return {
            "concurrency": self.concurrency,
            "seconds": round(self.seconds, 2),
            "requests": len(self.samples),
            "errors": len(self.errors) + len(self.failures),
            "throughput_rps": round(ok / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(float(np.percentile(latencies, 50)), 3) if len(latencies) else None,
            "p90_ms": round(float(np.percentile(latencies, 90)), 3) if len(latencies) else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 3) if len(latencies) else None,
            "max_ms": round(float(latencies.max()), 3) if len(latencies) else None,
        }


def build_request(url: str, body: bytes, content_type: str | None = "application/json") -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    head = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}",
            f"Content-Length: {len(body)}", "Connection: keep-alive"]
    if content_type is not None:
        head.append(f"Content-Type: {content_type}")
    return parts.hostname, parts.port, ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


async def _client(host: str, port: int, request: bytes, began: float, deadline: float, result: LoadResult,
                  keep_bodies: bool) -> None:
    reader = writer = None
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            status, headers, body = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            result.failures.append(f"{type(e).__name__}: {e}")
            result.samples.append(Sample(start - began, time.perf_counter() - start, 0, None))
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
            continue
        version = headers.get(b"x-model-version")
        result.samples.append(Sample(start - began, time.perf_counter() - start, status,
                                     version.decode() if version else None,
                                     body if keep_bodies or status != 200 else b""))
        if headers.get(b"connection", b"").lower() == b"close":
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _load(url: str, body: bytes, concurrency: int, seconds: float, warmup: float,
                content_type: str | None, keep_bodies: bool) -> LoadResult:
    host, port, request = build_request(url, body, content_type)
    if warmup > 0:
        await _load(url, body, concurrency, warmup, 0.0, content_type, False)
    result = LoadResult(concurrency, seconds)
    began = time.perf_counter()
    deadline = began + seconds
    await asyncio.gather(*(_client(host, port, request, began, deadline, result, keep_bodies)
                           for _ in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result


def run_load(url: str, payload: dict | bytes, concurrency: int, seconds: float, warmup: float = 0.0,
             content_type: str | None = "application/json", keep_bodies: bool = False) -> LoadResult:
    """Closed loop: `concurrency` connections each send the request again as soon as it is answered."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return asyncio.run(_load(url, body, concurrency, seconds, warmup, content_type, keep_bodies))
