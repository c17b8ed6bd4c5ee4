"""The restart limit that `farm work` applies to its worker processes and `farm work --ray` to its
actors (farm/run/supervisor.py `Restarts`), on a clock of the test's own."""

from farm.run.supervisor import MAX_RESTARTS, Restarts


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_at_most_the_limit_of_deaths_a_minute_are_restarted():
    clock = Clock()
    limit = Restarts(clock=clock)
    assert limit.limit == MAX_RESTARTS and limit.window == 60
    for n in range(1, MAX_RESTARTS + 1):
        clock.now += 1
        assert limit.died() and limit.recent == n
    clock.now += 1
    assert not limit.died() and limit.recent == MAX_RESTARTS + 1  # the sixth death within a minute: let go


def test_deaths_older_than_the_window_no_longer_count():
    clock = Clock()
    limit = Restarts(limit=2, window=60.0, clock=clock)
    assert limit.died() and limit.died()  # two at t=1000
    clock.now += 59.9
    assert not limit.died()  # a third within the minute
    clock.now += 0.1  # the first two are now 60 s old: out of the window
    assert limit.died() and limit.recent == 2  # the one at 1059.9 and this one
    clock.now += 120
    assert limit.died() and limit.recent == 1


def test_each_worker_has_its_own_limit():
    clock = Clock()
    a, b = Restarts(limit=1, clock=clock), Restarts(limit=1, clock=clock)
    assert a.died() and not a.died()
    assert b.died()
