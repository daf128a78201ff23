"""The one retry-on-death rule every caller follows (handles, plans, the HTTP and gRPC proxies): Ray-free."""

from __future__ import annotations

import ray
from ray.exceptions import ActorDiedError

from servegraph.runtime.data.responses import RESENDS, resend_delay


def test_a_request_is_sent_again_while_replicas_die_under_it_waiting_longer_each_time_up_to_resends():
    died = ActorDiedError()  # no actor id: nothing to drop from this process's routers
    delays = [resend_delay(died, n) for n in range(RESENDS + 1)]
    assert delays[-1] is None  # RESENDS resends made: the death reaches the caller
    waits = delays[:-1]
    assert len(waits) == RESENDS >= 3  # a node takes several replicas at once; each resend may meet the next
    assert all(w is not None and w > 0 for w in waits) and waits == sorted(waits) and waits[0] < waits[-1]


def test_only_a_replicas_death_is_sent_again():
    assert resend_delay(ValueError("the user's own error"), 0) is None
    assert resend_delay(ray.exceptions.GetTimeoutError("no answer in time"), 0) is None
