"""Five-field cron expressions (`minute hour day month weekday`), matched against UTC minutes.

Pure and small on purpose: arq's own cron decides on each worker's clock, and schedules must fire
once per tick however many workers run, so schedules.py only asks "does this minute match?" and
guards the tick with a Redis key. Supported: `*`, numbers, lists (`1,15`), ranges (`1-5`) and steps
(`*/15`, `0-30/10`, `5/20` = from 5 to the end), month and weekday names (`JAN`-`DEC`, `SUN`-`SAT`, any
case, in ranges too: `MON-FRI`) and the macros `@yearly` (`@annually`), `@monthly`, `@weekly`,
`@daily` (`@midnight`) and `@hourly`. Weekday 0 and 7 are Sunday. As in classic cron, when both day
and weekday are restricted, a day matching either one matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
FIELDS = ("minute", "hour", "day", "month", "weekday")
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
NAMES = {
    3: {m: i for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV",
                                    "DEC"), start=1)},
    4: {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))},
}


@dataclass(frozen=True, slots=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # the day field was `*`
    any_weekday: bool

    def matches(self, when: datetime) -> bool:
        if when.minute not in self.minutes or when.hour not in self.hours or when.month not in self.months:
            return False
        day_ok, weekday_ok = when.day in self.days, (when.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok

    def matches_minute(self, minute: int) -> bool:
        """`minute`: whole minutes since the epoch (a tick)."""
        return self.matches(datetime.fromtimestamp(minute * 60, UTC))


def _field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    out: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if span == "*":
                start, end = lo, hi
            elif "-" in span:
                a, b = span.split("-", 1)
                start, end = int(a), int(b)
            else:
                start = int(span)
                end = hi if step_text else start
        except ValueError:
            raise ValueError(f"cron {name} field: {item!r} is not a number, range or step") from None
        if step < 1 or not lo <= start <= end <= hi:
            raise ValueError(f"cron {name} field: {item!r} is outside {lo}-{hi} (or a bad step)")
        out.update(range(start, end + 1, step))
    return frozenset(out)


def _numbers(text: str, names: dict[str, int]) -> str:
    """`MON-FRI` as `1-5`: every run of letters that is a name becomes its number."""
    out, word = [], ""
    for c in text.upper() + ",":
        if c.isalpha():
            word += c
            continue
        if word:
            if word not in names:
                raise ValueError(f"cron: {word!r} is not one of {', '.join(names)}")
            out.append(str(names[word]))
            word = ""
        out.append(c)
    return "".join(out[:-1])


def parse_cron(expr: str) -> Cron:
    expr = expr.strip()
    if expr.startswith("@"):
        if expr.lower() not in MACROS:
            raise ValueError(f"cron {expr!r}: the macros are {', '.join(MACROS)}")
        expr = MACROS[expr.lower()]
    parts = expr.split()
    if len(parts) == 5:
        parts = [_numbers(p, NAMES[i]) if i in NAMES else p for i, p in enumerate(parts)]
    if len(parts) != 5:
        raise ValueError(f"cron {expr!r} needs 5 fields (minute hour day month weekday), has {len(parts)}")
    sets = [_field(p, n, lo, hi) for p, n, (lo, hi) in zip(parts, FIELDS, BOUNDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    return Cron(sets[0], sets[1], sets[2], sets[3], weekdays, parts[2].startswith("*"), parts[4].startswith("*"))
