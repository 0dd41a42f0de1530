"""Names for JSON values, the one place where the package admits it cannot know a type.

A decoded request body, a stored request, an OpenAPI fragment or a graph document is JSON: its
values are whatever a client sent or whatever a schema describes, and pydantic checks the ones
we act on. `Any` is written here once, with that reason, instead of at every seam that carries
such a value; everything else in the package is typed.
"""

from __future__ import annotations

from typing import Any, TypeAlias

#: A decoded (or about-to-be-encoded) JSON object.
# Any: JSON values are unknowable until pydantic validates them; a document we build mixes types.
JSONObject: TypeAlias = dict[str, Any]

#: A decoded JSON value of any kind (a body need not be an object until we check that it is).
# Any: as above.
JSONValue: TypeAlias = Any

__all__ = ["JSONObject", "JSONValue"]
