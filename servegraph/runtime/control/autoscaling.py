"""The autoscaling policy: from handle metrics to a replica target (pure, no Ray).

As in Ray Serve (``_private/autoscaling_policy.py``): every router reports how
many requests it has queued or in flight for a deployment; the controller
averages each router's reports over ``look_back_period_s`` and sums them; the
desired count is that total over ``target_ongoing_requests``, moved towards by
``upscaling_factor``/``downscaling_factor`` and clamped to
``[min_replicas, max_replicas]``. A decision must hold for ``upscale_delay_s``
(or ``downscale_delay_s``) before it is applied, except scaling up from zero,
which happens at once so the first request waits for one replica start only.
"""

from __future__ import annotations

import math
from collections import deque

from ...dsl.options import AutoscalingConfig


class Autoscaler:
    def __init__(self, config: AutoscalingConfig):
        self.config = config
        #: Router id -> recent (time, ongoing requests) reports.
        self._reports: dict[str, deque[tuple[float, float]]] = {}
        #: The policy's last wish (within min/max), exported as serve_autoscaling_desired_replicas.
        self.last_desired = 0
        #: Why the target is what it is (``servegraph status`` shows it).
        self.reason = "no decision yet"
        self._total, self._raw = 0.0, 0
        #: Positive while the policy has wanted more replicas since ``_since``; negative for fewer.
        self._direction = 0
        self._since = 0.0

    def record(self, router: str, now: float, ongoing: float) -> None:
        series = self._reports.setdefault(router, deque())
        series.append((now, ongoing))
        self._trim(series, now)

    def _trim(self, series: deque[tuple[float, float]], now: float) -> None:
        horizon = now - self.config.look_back_period_s
        while len(series) > 1 and series[0][0] < horizon:
            series.popleft()

    def total_ongoing(self, now: float) -> float:
        """Sum over routers of each one's average report in the look-back window."""
        total = 0.0
        # A router silent for a whole window (its process ended) no longer counts.
        stale = now - max(self.config.look_back_period_s, 2 * self.config.metrics_interval_s)
        for router in list(self._reports):
            series = self._reports[router]
            self._trim(series, now)
            if not series or series[-1][0] < stale:
                del self._reports[router]
                continue
            total += sum(v for _, v in series) / len(series)
        return total

    def desired(self, current: int, now: float) -> int:
        """What the policy wants now, before delays."""
        cfg = self.config
        total = self.total_ongoing(now)
        if current == 0:
            want = math.ceil(total / cfg.target_ongoing_requests) if total > 0 else 0
        else:
            ratio = total / (cfg.target_ongoing_requests * current)
            factor = cfg.upscaling_factor if ratio >= 1 else cfg.downscaling_factor
            factor = factor if factor is not None else cfg.smoothing_factor
            want = math.ceil(current * (1 + (ratio - 1) * factor))
            if total > 0:
                want = max(want, 1)  # never to zero while requests are ongoing
        self._total, self._raw = total, want
        return max(cfg.min_replicas, min(cfg.max_replicas, want))

    def decide(self, current: int, now: float, floor: int | None = None, floor_reason: str = "") -> int:
        """The new target: ``current`` until a change has been wanted for its delay.

        ``floor`` (graph-aware autoscaling, see graph_autoscaling.py) is what the callers' load needs: a
        target below it rises to it at once (within ``max_replicas``), since the callers' own scaling
        already waited its delay. ``reason`` then says which won.
        """
        cfg = self.config
        own = self.last_desired = self.desired(current, now)
        want = own
        if floor is not None and floor > own:
            want = min(cfg.max_replicas, floor)
        if want == current:
            self._direction = 0
            self._explain(current, own, want, floor, floor_reason)
            return current
        if want > current and want > own:  # the graph's floor: now, with the callers
            self._direction = 0
            self._explain(current, own, want, floor, floor_reason)
            return want
        self._explain(current, own, want, floor, floor_reason)
        if current == 0 and want > 0:  # scale from zero at once: a request is waiting
            self._direction = 0
            return want
        direction = 1 if want > current else -1
        if direction != self._direction:
            self._direction, self._since = direction, now
        delay = cfg.upscale_delay_s if direction > 0 else cfg.downscale_delay_s
        if now - self._since >= delay:
            self._direction = 0
            return want
        return current

    def _explain(self, current: int, own: int, want: int, floor: int | None, floor_reason: str) -> None:
        cfg = self.config
        if floor is not None and floor > own and want == min(cfg.max_replicas, floor):
            self.reason = floor_reason + (f" (capped at max_replicas {cfg.max_replicas})" if floor > cfg.max_replicas else "")
        elif own in (cfg.min_replicas, cfg.max_replicas) and self._raw != own:
            bound = "min_replicas" if own == cfg.min_replicas else "max_replicas"
            self.reason = f"own queue {self._total:.1f} ongoing wants {self._raw}, held at {bound} {own}"
        else:
            self.reason = f"own queue: {self._total:.1f} ongoing / target_ongoing_requests {cfg.target_ongoing_requests:g}"
        if want != current:
            self.reason += f"; moving {current} -> {want}"
