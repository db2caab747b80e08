"""Batching decisions as pure functions of the queue's state: how to cut texts into batches, how
many texts a free worker should wait for, how long, and how many it takes.

- Texts of concurrent requests share batches. A free worker takes a window of queued texts in
  arrival order (at most one batch worth), sorts it by length and cuts it into batches that
  minimise padded tokens plus a per-batch overhead, within max_batch_tokens (texts x longest)
  and max_batch_texts (plan_batches).
- Gathering. Under load texts arrive in waves: in a closed loop the requests of a batch that
  just finished come back a round trip later. A worker that took whatever was queued the moment
  it became free would run batches of every size, down to one text. So a free worker whose
  queue holds less than its share of the recent load waits for more. The share is the peak of
  texts in the server (tokenizing + queued + computing) split over the workers plus one: one
  share is always on its way back while the others compute, so no worker idles through the
  round trip. The wait is bounded three ways: max_batch_wait_s, a quarter of a batch's compute
  time, and only while texts are still arriving (being tokenized, or queued within the last
  millisecond). A lone request is never held: its share is one text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A worker stops gathering when no text was queued for this long (counted from when it became
# free) and none is being tokenized: the wave is over. Long enough for a loopback round trip
# on a loaded host, short against any batch worth gathering for.
ARRIVAL_GAP_S = 0.001
# ...and never waits longer than this fraction of a batch's compute time, so that waiting
# costs at most a fifth of a worker's time (x / (1 + x) at x = 1/4).
GATHER_FRACTION = 0.25
# How fast the load estimate follows a falling load (per window taken); a rising load is
# followed at once.
LOAD_DECAY = 0.5


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_batch_texts: int,
    batch_overhead_tokens: int = 8,
) -> list[list[int]]:
    """Split texts (given by their token counts) into batches, returned as lists of indices.

    Texts are sorted by length; consecutive runs become batches. The split minimises
    sum(batch texts x batch longest) + batch_overhead_tokens per batch (an exact dynamic
    programme, O(n x max_batch_texts)), subject to texts x longest <= max_batch_tokens and
    texts <= max_batch_texts. A single text longer than the budget gets a batch of its own.
    """
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: lengths[i])
    sorted_lengths = [lengths[i] for i in order]
    if sorted_lengths[-1] - sorted_lengths[0] <= batch_overhead_tokens:
        # Uniform lengths: padding is negligible, only the budget splits.
        cuts = []
        start = 0
        while start < n:
            size = max(1, min(max_batch_texts, max_batch_tokens // max(sorted_lengths[-1], 1)))
            cuts.append(order[start : start + size])
            start += size
        return cuts
    inf = math.inf
    cost = [0.0] + [inf] * n
    back = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = sorted_lengths[end - 1]
        limit = min(max_batch_texts, max(1, max_batch_tokens // max(longest, 1)))
        for size in range(1, min(limit, end) + 1):
            candidate = cost[end - size] + batch_overhead_tokens + size * longest
            if candidate < cost[end]:
                cost[end] = candidate
                back[end] = end - size
    batches: list[list[int]] = []
    end = n
    while end > 0:
        start = back[end]
        batches.append(order[start:end])
        end = start
    batches.reverse()
    return batches


def share(load_texts: float, workers: int, max_batch_texts: int) -> int:
    """Texts a free worker should wait for: its part of the recent load."""
    return max(1, min(max_batch_texts, int(load_texts / (workers + 1) + 0.5)))


def follow_load(load_texts: float, peak_texts: int) -> float:
    """The next load estimate: the peak since the last window, at once when it rises."""
    if peak_texts >= load_texts:
        return float(peak_texts)
    return LOAD_DECAY * load_texts + (1 - LOAD_DECAY) * peak_texts


def window_limit(queued_texts: int, share_texts: int, workers: int, max_batch_texts: int) -> int:
    """How many queued texts a free worker takes: the larger of its share and an even split of
    the queue over the workers (free workers split a backlog instead of one taking it all), but
    no remainder smaller than a share, which would only make a batch too small to be worth it."""
    limit = max(share_texts, math.ceil(queued_texts / workers))
    if queued_texts - limit < share_texts:
        limit = queued_texts
    return min(max_batch_texts, limit)


def gather_budget(max_batch_wait_s: float, batch_s: float, batches_seen: int) -> float:
    """The longest a free worker may gather: max_batch_wait_s, and a fraction of a batch."""
    if batches_seen:
        return min(max_batch_wait_s, GATHER_FRACTION * batch_s)
    return max_batch_wait_s


@dataclass(frozen=True, slots=True)
class QueueView:
    """What the gathering policy looks at, read under the queue's lock."""

    queued_texts: int
    queued_tokens: int
    tokenizing_texts: int
    texts_in_server: int
    load_texts: float
    last_queued_at: float


def gather_wait(
    view: QueueView,
    *,
    now: float,
    started: float,
    deadline: float,
    share_texts: int,
    max_batch_tokens: int,
    arrival_gap_s: float = ARRIVAL_GAP_S,
) -> float | None:
    """How much longer a free worker should wait for texts, or None to take its window now."""
    if now >= deadline:
        return None
    if view.queued_texts >= share_texts or view.queued_tokens >= max_batch_tokens:
        return None
    if view.tokenizing_texts:
        return deadline - now  # more texts are on their way
    if view.texts_in_server >= view.load_texts:
        return None  # every text the load estimate expects is here already
    quiet_at = max(view.last_queued_at, started) + arrival_gap_s
    if now >= quiet_at:
        return None  # the wave is over
    return min(deadline, quiet_at) - now
