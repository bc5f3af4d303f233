"""Five-field cron schedules (Kubernetes CronJob syntax): the shortest time between two runs.

A CronJob's deadline must end before its next run may start, or a hung run (concurrencyPolicy
Forbid) silences the runs after it; this is what the stack config, the program and the policy
pack check that against. Pure, import-light (the policy pack imports it).
"""

from __future__ import annotations

from datetime import date, timedelta

RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
# A check job (an alarm: its failure is the alert) must end within this many seconds.
CHECK_DEADLINE_MAX_SECONDS = 300
HORIZON_DAYS = 2 * 366 + 7  # covers every day-of-month/day-of-week/month combination's gap


def _field(text: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        base, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if step < 1:
            raise ValueError(f"cron step must be positive: {text!r}")
        if base == "*":
            a, b = lo, hi
        elif "-" in base:
            a, b = (int(x) for x in base.split("-", 1))
        else:
            a = int(base)
            b = hi if step_s else a
        if not (lo <= a <= b <= hi):
            raise ValueError(f"cron field {text!r} out of range {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return out


def parse(schedule: str) -> tuple[list[int], set[int], set[int], set[int], bool, bool]:
    """(minutes of the day it fires at, sorted; days of month; months; days of week (0 = Sunday);
    day-of-month restricted; day-of-week restricted)."""
    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError(f"a cron schedule has 5 fields: minute hour day month weekday "
                         f"(got {schedule!r})")
    minute, hour, dom, month, dow = (_field(f, lo, hi)
                                     for f, (lo, hi) in zip(fields, RANGES, strict=True))
    dow = {d % 7 for d in dow}
    times = sorted(h * 60 + m for h in hour for m in minute)
    return times, dom, month, dow, fields[2] != "*", fields[4] != "*"


def min_interval_seconds(schedule: str, start: date = date(2025, 1, 1)) -> int:
    """The shortest time between two consecutive runs of `schedule`, in seconds (UTC)."""
    times, dom, month, dow, dom_r, dow_r = parse(schedule)

    def fires(d: date) -> bool:
        if d.month not in month:
            return False
        on_dom, on_dow = d.day in dom, d.isoweekday() % 7 in dow
        if dom_r and dow_r:  # cron: either matches when both are restricted
            return on_dom or on_dow
        return (on_dom or not dom_r) and (on_dow or not dow_r)

    days = [i for i in range(HORIZON_DAYS) if fires(start + timedelta(days=i))]
    if not days:
        raise ValueError(f"cron schedule {schedule!r} never runs")
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    gaps += [(d2 - d1) * 1440 - times[-1] + times[0] for d1, d2 in zip(days, days[1:],
                                                                         strict=False)]
    if not gaps:
        raise ValueError(f"cron schedule {schedule!r} runs too rarely to have an interval")
    return min(gaps) * 60
