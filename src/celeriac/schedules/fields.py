"""The five fields of a crontab: what each accepts, read into the set of values it matches.

One grammar serves every field, as in cron and Celery: ``*``, a number, a name (days of the
week and months only), a range ``a-b`` (one that runs past the field's end wraps round:
hours ``22-2`` are 22, 23, 0, 1, 2), a step ``*/n``, ``a-b/n`` or ``a/n`` (from ``a`` to the
field's end), and comma-separated lists of these. A field may also be an int or a set/list
of ints (or of such strings). Days of the week count from Sunday = 0; 7 is Sunday too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: What a crontab field may be given as.
FieldSpec = int | str | Iterable[int | str]


def _names(*names: str, first: int = 0) -> dict[str, int]:
    """Full names and three-letter abbreviations, numbered from ``first`` in order."""
    table: dict[str, int] = {}
    for number, name in enumerate(names, start=first):
        table[name] = table[name[:3]] = number
    return table


WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MONTHS = ("", "january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")  # fmt: skip
WEEKDAY_NAMES = _names(*WEEKDAYS)
MONTH_NAMES = _names(*MONTHS[1:], first=1)


@dataclass(frozen=True)
class Field:
    """One crontab field: its name, its range as written, the names it knows."""

    name: str
    low: int
    #: The highest value that may be written: 7 for day_of_week, read as Sunday (0).
    high: int
    names: Mapping[str, int]

    def parse(self, spec: object) -> tuple[frozenset[int], str]:
        """The values ``spec`` matches, and ``spec`` as text (how it is shown and stored).

        Raises ValueError naming the field and ``spec`` for anything unreadable, out of range
        or empty.
        """
        try:
            parts = self._parts(spec)
            values = set[int]()
            for part in parts:
                values.update(self._part(part))
        except ValueError as error:
            raise ValueError(f"crontab {self.name}={spec!r}: {error}") from None
        if not values:
            raise ValueError(f"crontab {self.name}={spec!r}: matches nothing")
        if self.high == 7:  # day_of_week: 7 is Sunday again
            values = {0 if value == 7 else value for value in values}
        return frozenset(values), ",".join(parts)

    def _parts(self, spec: object) -> list[str]:
        """``spec``'s comma-separated parts as text."""
        if isinstance(spec, bool):
            raise ValueError("a bool is not a field value")
        if isinstance(spec, int):
            return [str(spec)]
        if isinstance(spec, str):
            return [part.strip() for part in spec.split(",")]
        if isinstance(spec, Iterable):
            items = list(spec)
            if not all(isinstance(item, int | str) for item in items):
                raise ValueError("a collection must hold ints or strings")
            items.sort(key=lambda item: (isinstance(item, str), item))
            return [part for item in items for part in self._parts(item)]
        raise ValueError("give an int, a string such as '*/15' or '1-5', or a set or list of ints")

    def _part(self, part: str) -> list[int]:
        """The values one comma-free part matches."""
        body, slash, step_text = part.partition("/")
        step = self._step(step_text) if slash else 1
        if body == "*":
            values = list(range(self.low, self.high + 1))
        elif "-" in body:
            first_text, _, last_text = body.partition("-")
            first, last = self._value(first_text), self._value(last_text)
            if first <= last:
                values = list(range(first, last + 1))
            else:  # wraps round the field's end
                values = [*range(first, self.high + 1), *range(self.low, last + 1)]
        else:
            first = self._value(body)
            values = list(range(first, self.high + 1)) if slash else [first]
        return values[::step]

    def _step(self, text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise ValueError(f"step {text!r} is not a positive whole number")
        return int(text)

    def _value(self, text: str) -> int:
        text = text.strip()
        if text.isdigit():
            value = int(text)
        elif text.lower() in self.names:
            return self.names[text.lower()]
        else:
            known = " or a name (mon, jan)" if self.names else ""
            raise ValueError(f"{text!r} is not a number{known}")
        if not self.low <= value <= self.high:
            raise ValueError(f"{value} is out of range {self.low}-{self.high}")
        return value


MINUTE = Field("minute", 0, 59, {})
HOUR = Field("hour", 0, 23, {})
DAY_OF_WEEK = Field("day_of_week", 0, 7, WEEKDAY_NAMES)
DAY_OF_MONTH = Field("day_of_month", 1, 31, {})
MONTH_OF_YEAR = Field("month_of_year", 1, 12, MONTH_NAMES)
