"""The shop's checkout: reserve the cart, charge the card through the gateway, confirm the order."""

from __future__ import annotations

import logging

from .gateway import gateway

__all__ = ["PaymentDeclined", "checkout"]

log = logging.getLogger("shop.payments")


class PaymentDeclined(Exception):
    """The order could not be paid; the cart stays as it was."""


def checkout(order_id: str, amount: float, card: str, fail: bool, extra: dict[str, str]) -> str:
    """Charge *amount* for *order_id*; return the charge id, or raise ``PaymentDeclined``."""
    charge = charge_card(order_id, amount, card, fail)
    log.info("order %s paid: %.2f EUR on card *%s (charge %s)", order_id, amount, card, charge, extra=extra)
    return charge


def charge_card(order_id: str, amount: float, card: str, fail: bool) -> str:
    payload: dict[str, object] = {
        "amount": round(amount * 100),
        "currency": "eur",
        "card_last4": card,
        "idempotency_key": order_id,
        "fail": fail,
    }
    try:
        answer = gateway.post("/v1/charges", payload)
    except Exception as exc:
        raise PaymentDeclined(f"order {order_id}: charge of {amount:.2f} EUR failed") from exc
    return str(answer["id"])
