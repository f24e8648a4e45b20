"""A card processor's HTTP client, as the simulated shop sees it: it fails now and then.

Nothing here touches the network. ``post`` decides from the charge it is given whether the
processor "timed out", and raises the way a real client library would, a few frames down.
"""

from __future__ import annotations

__all__ = ["GatewayError", "gateway"]


class GatewayError(Exception):
    """The card processor did not answer in time, or refused the connection."""


class _Gateway:
    """A card processor client: ``post(path, payload)`` returns the processor's JSON answer."""

    base_url = "https://pay.example.net"
    timeout = 2.5

    def post(self, path: str, payload: dict[str, object]) -> dict[str, object]:
        response = self._send("POST", path, payload)
        return {"id": response, "status": "succeeded"}

    def _send(self, method: str, path: str, payload: dict[str, object]) -> str:
        if payload.get("fail"):  # the demo's traffic decided in advance which charges fail
            raise GatewayError(
                f"{method} {self.base_url}{path}: no answer within {self.timeout:.1f} s "
                f"(idempotency key {payload['idempotency_key']})"
            )
        return f"ch_{payload['idempotency_key']}"


gateway = _Gateway()
