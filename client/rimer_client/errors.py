"""Typed errors: the server's 4xx/5xx answers (`{"detail", "field", "errors"?}`) as exceptions."""

from __future__ import annotations

import bisect
import re


class RimerError(Exception):
    """An answer the server refused (or no answer at all: `status` None).

    `detail` is the server's message, `field` the request field it names (`series[0].values[40]`,
    `horizon`, `id`, ...; None when it names none), `errors` the problems a 422 lists
    (`[{"field", "message"}]`: up to 20 from the server's schema checks, else the first), and
    `series_id` the series that field points at, when the client can tell (the unique_id of the
    frame's row for `series[i]...` fields of a batch)."""

    def __init__(self, status: int | None, detail: str, field: str | None = None,
                 errors: list[dict] | None = None, series_id=None):
        self.status, self.detail, self.field = status, detail, field
        self.errors = errors or []
        self.series_id = series_id
        where = f" (field {field})" if field else ""
        which = f" [series {series_id!r}]" if series_id is not None else ""
        super().__init__(f"{status or 'no answer'}: {detail}{where}{which}")


class ValidationError(RimerError):
    """422: the request is malformed (a NaN value, a too-short series, an unknown field, ...)."""


class NotFound(RimerError):
    """404: no such series (or route)."""


class Conflict(RimerError):
    """409: a late timestamp, a different freq, or the server's series capacity."""


class PayloadTooLarge(RimerError):
    """413: too many series, values or bytes in one request."""


class Unauthorized(RimerError):
    """401 or 403: a missing or wrong API key."""


class Unavailable(RimerError):
    """429 or 503 after every retry: the server is busy, loading, or refusing changes."""


class ServerError(RimerError):
    """Another 5xx."""


class ConnectionFailed(RimerError):
    """No answer after every retry (connection refused, reset, timed out); `status` is None."""


_BY_STATUS = {422: ValidationError, 400: ValidationError, 404: NotFound, 409: Conflict,
              413: PayloadTooLarge, 401: Unauthorized, 403: Unauthorized, 429: Unavailable,
              503: Unavailable}
_BATCH_FIELD = re.compile(r"^(?:series|ids|offsets)\[(\d+)\]")
_FLAT_FIELD = re.compile(r"^(?:values|timestamps)\[(\d+)\]$")


def error_for(status: int, body, series_ids: list | None = None,
              offsets: list[int] | None = None, series_id=None) -> RimerError:
    """The exception for an error answer; `series_ids` maps a batch's `series[i]` (or a columnar
    body's `ids[i]`) to its id, and with a columnar body's `offsets`, `values[k]` and
    `timestamps[k]` to the series whose run holds point k; `series_id` is the series of a call
    about one (GET or DELETE /series/{id})."""
    if isinstance(body, dict):
        detail = str(body.get("detail") or f"HTTP {status}")
        field = body.get("field")
        errors = body.get("errors") if isinstance(body.get("errors"), list) else None
    else:
        detail, field, errors = (str(body) if body else f"HTTP {status}"), None, None
    if series_ids is not None and isinstance(field, str):
        m = _BATCH_FIELD.match(field)
        flat = _FLAT_FIELD.match(field) if offsets else None
        if m and int(m.group(1)) < len(series_ids):
            series_id = series_ids[int(m.group(1))]
        elif flat:
            i = bisect.bisect_right(offsets, int(flat.group(1))) - 1
            if 0 <= i < len(series_ids):
                series_id = series_ids[i]
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else RimerError)
    return cls(status, detail, field, errors, series_id)
