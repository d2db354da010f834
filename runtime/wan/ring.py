"""Ring reduce-scatter + all-gather between gateways, for dense payloads.

With ``n`` centers each center sends ``2 (n - 1) / n`` of the payload (instead of
``n - 1`` payloads under all-gather), and every link of the ring is busy at once.

The contribution is split into ``n`` segments. Reduce-scatter: in step ``k`` center ``i``
sends its running sum of segment ``(i - k) mod n`` to its successor and adds its own values
to the segment ``(i - k - 1) mod n`` it receives from its predecessor. After ``n - 1``
steps center ``i`` owns the full sum of segment ``(i + 1) mod n``; it encodes it once and
the all-gather forwards those exact bytes around the ring, so every center (the owner
included, which decodes its own bytes) ends with bit-identical values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from suanwang.runtime.topology import segments

if TYPE_CHECKING:
    from suanwang.runtime.wan.gateway import Gateway, Group


def ring_allreduce(
    gw: "Gateway", round: int, order: list[str], group: "Group", weighted: torch.Tensor, deadline: float
) -> torch.Tensor:
    """Sum ``weighted`` (this center's part of ``group``, times its weight) over ``order``.

    Raises:
        ReduceError: a send failed or a segment did not arrive before ``deadline``.
    """
    from suanwang.runtime.wan.gateway import ReduceError, decode

    n = len(order)
    i = order.index(gw.center)
    nxt, prv = order[(i + 1) % n], order[(i - 1) % n]
    bounds = segments(weighted.numel(), n)

    def seg(t: torch.Tensor, s: int) -> torch.Tensor:
        a, b = bounds[s]
        return t[a:b]

    def send(name: str, enc) -> None:
        res = gw.send(round, [nxt], name, enc, 0, deadline)[nxt]
        if res.error:
            raise ReduceError(f"round {round}: sending {name} to {nxt} failed: {res.error}")

    def receive(name: str):
        if gw.wait_for(round, [(prv, name)], deadline):
            raise ReduceError(f"round {round}: {name} from {prv} did not arrive before the deadline")
        return gw.take(round, (prv, name))

    acc = weighted
    for k in range(n - 1):
        s_out, s_in = (i - k) % n, (i - k - 1) % n
        enc = group.codec.encode(seg(acc, s_out).contiguous())
        send(f"{group.name}.rs.{n}.{s_out}", enc)
        enc.release()
        partial, _, _ = receive(f"{group.name}.rs.{n}.{s_in}")
        seg(acc, s_in).add_(partial)

    out = torch.empty_like(acc)
    owned = (i + 1) % n
    enc = group.codec.encode(seg(acc, owned).contiguous())
    seg(out, owned).copy_(decode(enc))
    for k in range(n - 1):
        s_in = (i - k) % n  # the segment the predecessor forwards in step k
        send(f"{group.name}.ag.{n}.{(owned - k) % n}", enc)
        enc.release()
        value, _, enc = receive(f"{group.name}.ag.{n}.{s_in}")
        seg(out, s_in).copy_(value)
    return out
