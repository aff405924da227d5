"""Typed reads from a parsed TOML table, with errors that name the file and the key.

A host whose rendered configuration is wrong must refuse to start with one line that says what to fix.
The messages name keys and describe the expected type, but never quote the value that was read: the file
holds the broker password and the API token, and a secret typed under the wrong key must not reach a log
or a terminal through an error message.
"""

from pathlib import Path
from typing import Any

_MISSING = object()


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message says which key and file."""


class Table:
    """One TOML table, read key by key so that keys nobody asked for can be reported as unknown.

    `name` is the dotted path of the table in the file (empty for the top level), used in messages.
    """

    def __init__(self, data: dict[str, Any], name: str, source: Path) -> None:
        self._data = data
        self._name = name
        self._source = source
        self._read: set[str] = set()

    def path(self, key: str) -> str:
        """The dotted name of `key` as a reader of the file would write it."""
        return f"{self._name}.{key}" if self._name else key

    def error(self, key: str, problem: str) -> ConfigError:
        """An error about `key`, naming the file; `problem` must not contain the key's value."""
        return ConfigError(f"{self._source}: {self.path(key)} {problem}")

    def has(self, key: str) -> bool:
        """Whether an optional key or table is present."""
        return key in self._data

    def _get(self, key: str, default: Any = _MISSING) -> Any:
        self._read.add(key)
        if key in self._data:
            return self._data[key]
        if default is _MISSING:
            raise self.error(key, "is missing")
        return default

    def string(self, key: str) -> str:
        """A non-empty string."""
        value = self._get(key)
        if not isinstance(value, str) or not value:
            raise self.error(key, "must be a non-empty string")
        return value

    def choice(self, key: str, choices: tuple[str, ...], why: str = "") -> str:
        """A string from a fixed set; `why` explains the restriction when it is not obvious."""
        value = self._get(key)
        if value not in choices:
            reason = f" ({why})" if why else ""
            raise self.error(key, f"must be one of: {', '.join(choices)}{reason}")
        return value

    def integer(self, key: str, minimum: int, maximum: int | None = None) -> int:
        """An integer (TOML booleans are refused) of at least `minimum` (and at most `maximum`, if given)."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, _integer_range(minimum, maximum))
        if maximum is not None and value > maximum:
            raise self.error(key, _integer_range(minimum, maximum))
        return value

    def positive_number(self, key: str) -> float:
        """An integer or float greater than zero."""
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.error(key, "must be a number > 0")
        return float(value)

    def strings(self, key: str, empty: bool = False) -> tuple[str, ...]:
        """An array of distinct non-empty strings: non-empty, unless `empty` allows `[]`."""
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise self.error(key, f"must be {'an' if empty else 'a non-empty'} array of non-empty strings")
        if not value and not empty:
            raise self.error(key, "must be a non-empty array of non-empty strings")
        if len(set(value)) != len(value):
            raise self.error(key, "must not repeat an entry")
        return tuple(value)

    def array(self, key: str) -> tuple[Any, ...]:
        """An optional array of any values (task arguments); empty when absent."""
        value = self._get(key, [])
        if not isinstance(value, list):
            raise self.error(key, "must be an array")
        return tuple(value)

    def mapping(self, key: str) -> dict[str, Any]:
        """An optional inline table of any values (task keyword arguments); empty when absent."""
        value = self._get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        return dict(value)

    def table(self, key: str) -> "Table":
        """A required sub-table."""
        value = self._get(key)
        if not isinstance(value, dict):
            raise self.error(key, "must be a table ([" + self.path(key) + "])")
        return Table(value, self.path(key), self._source)

    def tables(self, key: str, required: bool) -> list["Table"]:
        """An array of tables ([[key]]); an absent optional one is empty."""
        value = self._get(key, _MISSING if required else [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise self.error(key, "must be an array of tables ([[" + self.path(key) + "]])")
        if required and not value:
            raise self.error(key, "must have at least one entry")
        return [Table(item, f"{self.path(key)}[{index}]", self._source) for index, item in enumerate(value)]

    def finish(self) -> None:
        """Refuse keys that were never read: a misspelt key would otherwise be silently ignored."""
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            raise self.error(unknown[0], "is not a known key")


def _integer_range(minimum: int, maximum: int | None) -> str:
    if maximum is None:
        return f"must be an integer >= {minimum}"
    return f"must be an integer from {minimum} to {maximum}"
