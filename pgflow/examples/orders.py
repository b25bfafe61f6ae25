"""An example flow: fulfil a web-shop order.

    validate ──> price (map: one task per order line) ──> charge ──> ship
                                                            └─────> receipt

Like real services, two steps misbehave now and then, deterministically by
order number so the demo shows both every time:

- `charge`: the payment gateway answers "503" on the first attempt for one
  order in four; the step is retried after `base_delay` (0.2 s) and succeeds.
- `ship`: the courier API hangs on the first attempt for one order in five;
  the step's 0.5 s timeout fails that attempt (the supervisor kills the
  executor process and forks a fresh one) and the retry succeeds.

Handlers sleep a few milliseconds to stand in for I/O.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pgflow import Context, Flow

log = logging.getLogger(__name__)

flow = Flow("orders", max_attempts=3, base_delay=0.2, timeout=5)

PRICES = {"tea": 4.5, "mug": 12.0, "kettle": 39.0, "honey": 7.25, "biscuits": 3.2}


class PaymentGatewayError(RuntimeError):
    """A transient failure of the (simulated) payment provider."""


def flaky_payment(order_no: int) -> bool:
    return order_no % 4 == 1


def slow_courier(order_no: int) -> bool:
    return order_no % 5 == 2


def make_order(order_no: int) -> dict[str, Any]:
    """A sample order (the demo starts one run per order)."""
    skus = list(PRICES)
    lines = [{"sku": skus[(order_no + i) % len(skus)], "qty": 1 + (order_no * (i + 1)) % 3}
             for i in range(1 + order_no % 4)]
    return {"order_no": order_no, "customer": f"customer-{order_no % 7}", "lines": lines}


@flow.step()
def validate(order: dict[str, Any], ctx: Context) -> list[dict[str, Any]]:
    unknown = [line["sku"] for line in order["lines"] if line["sku"] not in PRICES]
    if unknown or not order["lines"]:
        raise ValueError(f"order {order['order_no']}: no lines or unknown SKUs {unknown}")
    return order["lines"]


@flow.map(array="validate")
def price(line: dict[str, Any], ctx: Context) -> dict[str, Any]:
    time.sleep(0.02)  # a price lookup
    return {**line, "amount": round(PRICES[line["sku"]] * line["qty"], 2)}


@flow.step(depends_on=["price"])
def charge(deps: dict[str, Any], ctx: Context) -> dict[str, Any]:
    order_no = ctx.flow_input["order_no"]
    total = round(sum(line["amount"] for line in deps["price"]), 2)
    time.sleep(0.05)  # the payment provider's round trip
    if flaky_payment(order_no) and ctx.attempt == 1:
        raise PaymentGatewayError(f"payment gateway answered 503 for order {order_no}; try again")
    log.info("charged %.2f for order %d", total, order_no)
    return {"total": total, "payment_id": f"pay-{ctx.run_id.hex[:8]}"}


@flow.step(depends_on=["charge"], timeout=0.5)
def ship(deps: dict[str, Any], ctx: Context) -> dict[str, Any]:
    order_no = ctx.flow_input["order_no"]
    if slow_courier(order_no) and ctx.attempt == 1:
        time.sleep(30)  # the courier API hangs: the 0.5 s timeout ends this attempt
    time.sleep(0.03)
    return {"tracking": f"TRK{order_no:06d}"}


@flow.step(depends_on=["charge"])
def receipt(deps: dict[str, Any], ctx: Context) -> str:
    return f"Thank you! We charged {deps['charge']['total']:.2f} ({deps['charge']['payment_id']})."
