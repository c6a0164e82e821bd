"""An azure-core transport that stands in for Azure Resource Manager: it records every request an SDK
client sends and answers from a table of canned responses, so a test sees the exact calls (and bodies)
without a network. Hand it to a client as `transport=` (azure-core pipeline option).
"""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

# (method, path regex) -> (status, JSON body). Paths are relative to `root` (a resource id prefix).
Answers = dict[tuple[str, str], tuple[int, dict]]


class StaticToken:
    """A credential that always has a token: nothing is signed in, nothing leaves the machine."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("recorded-token", int(time.time()) + 3600)


def canned_response(request: Any, status: int, payload: dict) -> HttpResponseImpl:
    """A JSON response as azure-core's pipeline reads one (its body streamed once, like a socket's)."""
    content = json.dumps(payload).encode()
    body = io.BytesIO(content)
    return HttpResponseImpl(
        request=request, internal_response=body, status_code=status, reason="OK" if status < 400 else "Error",
        content_type="application/json",
        headers=CaseInsensitiveDict({"Content-Type": "application/json", "Content-Length": str(len(content))}),
        stream_download_generator=lambda **kwargs: iter([body.read()]),
    )  # fmt: skip


class RecordingTransport(HttpTransport):
    """Records requests; answers `answers` first, then a PUT with its body as the created resource
    (provisioned at once, as ARM answers a synchronous create) and anything else with 404."""

    def __init__(self, root: str, answers: Answers) -> None:
        self.root = root
        self.answers = answers
        self.sent: list[dict] = []

    def send(self, request: Any, **kwargs: Any) -> HttpResponseImpl:
        url = urlsplit(request.url)
        path = url.path.removeprefix(self.root) or "/"
        content = request.content
        body = json.loads(content) if content else None
        self.sent.append({"method": request.method, "host": url.hostname, "path": path, "body": body,
                          "authorization": request.headers.get("Authorization")})  # fmt: skip
        for (method, pattern), (status, payload) in self.answers.items():
            if request.method == method and re.fullmatch(pattern, path):
                return canned_response(request, status, payload)
        if request.method == "PUT":
            created = {**body, "id": self.root + path, "name": path.rsplit("/", 1)[-1]}
            created["properties"] = {**created.get("properties", {}), "provisioningState": "Succeeded"}
            return canned_response(request, 201, created)
        return canned_response(request, 404, {"error": {"code": "ResourceNotFound", "message": f"{path} not found"}})

    def writes(self) -> list[dict]:
        return [sent for sent in self.sent if sent["method"] in ("PUT", "POST", "PATCH", "DELETE")]

    def __enter__(self) -> RecordingTransport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass
