"""Two-shot all-reduce between gateways: a direct reduce-scatter, then a direct all-gather.

Every gateway holds a channel to every other, so a reduction need not walk a ring. The
payload is split into one segment per participant; center ``i`` owns segment ``i``.

1. Reduce-scatter, one hop: each center sends segment ``s`` of its weighted contribution
   to the owner of ``s``, all at once, and sums what arrives for its own segment.
2. All-gather, one hop: each owner encodes its sum once and sends those bytes to every
   other participant; every center (the owner included, which decodes its own bytes) ends
   with bit-identical values.

Each center sends ``2 (n - 1) / n`` payloads, as in a ring, but spread over its ``n - 1``
links and in two dependent hops instead of ``2 (n - 1)``: on a WAN, where a hop costs
half a round trip, the ring's latency grows with the centers and this one does not. Sends
are not waited on between the hops: a hop waits for the peers' payloads, which arrive
about half a round trip before the acks of its own.

Both hops round with error feedback: what rounding took off a center's segments, and off
an owner's sum, this round is added to the same values the next time the group is reduced
(kept in the group's codec state as ``residual`` and ``owner_residual``, so checkpoints
carry them), so rounding errors do not pile up over rounds however alike the rounds are.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from suanwang.runtime.topology import segments

if TYPE_CHECKING:
    from suanwang.runtime.wan.gateway import Gateway, Group


def two_shot_allreduce(
    gw: "Gateway",
    round: int,
    order: list[str],
    group: "Group",
    own: torch.Tensor,
    weights: dict[str, float],
    deadline: float,
) -> torch.Tensor:
    """The ``weights``-weighted sum of every participant's part of ``group`` (``own`` is
    this center's) over ``order`` (the participants; the same list, in the same order, on
    every center).

    Raises:
        ReduceError: a send failed, or a segment did not arrive before ``deadline``.
    """
    from suanwang.runtime.wan.gateway import ReduceError, decode

    n = len(order)
    i = order.index(gw.center)
    bounds = segments(own.numel(), n)
    a, b = bounds[i]
    peers = [p for p in order if p != gw.center]
    residual, owner_residual = (_state(group, key, own.numel()) for key in ("residual", "owner_residual"))
    x = own + residual
    sends: list[tuple[str, object]] = []
    lent = []

    def send(to: list[str], name: str, enc) -> None:
        lent.append(enc)  # its buffer goes back to the codec once its send is over
        sends.append((name, gw.send_async(round, to, name, enc, deadline)))

    def failed_send() -> str | None:
        for name, fut in sends:
            why = gw.send_failure(fut) if fut.done() else None
            if why:
                return f"{name}: {why}"
        return None

    def receive(keys: list[tuple[str, str]], what: str) -> list[torch.Tensor]:
        missing = gw.wait_for(round, keys, deadline, stop=lambda: failed_send() is not None)
        if missing:
            why = failed_send()
            if why:  # no use waiting for the rest: the round cannot complete
                raise ReduceError(f"round {round}: sending {why}")
            late = sorted(p for p, _ in missing)
            raise ReduceError(f"round {round}: {what} from {late} did not arrive before the deadline")
        return [gw.take(round, k)[0] for k in keys]

    failure: ReduceError | None = None
    try:
        for s, owner in enumerate(order):
            if owner != gw.center:
                lo, hi = bounds[s]
                enc = group.codec.encode(x[lo:hi])
                residual[lo:hi] = x[lo:hi] - decode(enc)
                send([owner], f"{group.name}.rs.{n}.{s}", enc)
        residual[a:b] = 0.0  # the owner's own values enter its sum exactly
        acc = x[a:b] * weights[gw.center]
        # summed in participant order, whatever order the parts arrived in
        for p, part in zip(peers, receive([(p, f"{group.name}.rs.{n}.{i}") for p in peers], f"segment {i} of {group.name}")):
            acc.add_(part, alpha=weights[p])
        acc.add_(owner_residual[a:b])
        owner_residual.zero_()  # a segment owned before (other participants) starts afresh
        enc = group.codec.encode(acc)
        out = torch.empty_like(own)
        out[a:b] = decode(enc)
        owner_residual[a:b] = acc - out[a:b]
        send(peers, f"{group.name}.ag.{n}.{i}", enc)
        keys = [(p, f"{group.name}.ag.{n}.{order.index(p)}") for p in peers]
        for (p, _), value in zip(keys, receive(keys, f"reduced segments of {group.name}")):
            lo, hi = bounds[order.index(p)]
            out[lo:hi] = value
    except ReduceError as err:
        failure = err
    except Exception as err:  # noqa: BLE001 - a codec's refusal, say: the round fails cleanly
        failure = ReduceError(f"round {round}: {type(err).__name__}: {err}")
    try:
        # counts the bytes even of a failed round; after a failure, no waiting for acks
        gw.settle(round, sends, deadline if failure is None else time.time())
    except ReduceError as err:
        failure = ReduceError(f"{failure}; {err}") if failure else err
    finally:
        for (_, fut), enc in zip(sends, lent):
            # a cancelled send may still be reading the buffer: release it when it stops
            fut.add_done_callback(lambda _, enc=enc: enc.release())
    if failure is not None:
        raise failure
    return out


def _state(group: "Group", key: str, numel: int) -> torch.Tensor:
    t = group.state.tensors.get(key)
    if t is None or t.numel() != numel:
        t = group.state.tensors[key] = torch.zeros(numel, dtype=torch.float32)
    return t
