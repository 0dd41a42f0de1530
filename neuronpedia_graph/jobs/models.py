"""Wire models of the job endpoints, and the record each job keeps on disk.

Light on purpose (no ML imports): the OpenAPI generator and the routes read them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from neuronpedia_graph.json_types import JSONObject

Status = Literal["queued", "running", "done", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})
# secrets.token_urlsafe(18): 24 characters, 144 random bits. Nothing else is a job id, so an
# id can never name a path outside the store.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{24}$")
# Paging of GET /graphs: the most jobs one page lists, and the largest offset it may name.
MAX_PAGE = 100
MAX_OFFSET = 10**9


class JobError(BaseModel):
    """The reply the synchronous /generate-graph would have given: its status and body."""

    status: int
    body: JSONObject


class JobLinks(BaseModel):
    self: str
    events: str
    document: str


class JobRecord(BaseModel):
    """One job as stored under GRAPH_STORE_DIR/jobs/<id>.json (never with its signed_url).

    Attributes:
        request: the validated request's fields, without `signed_url`.
        uploads: the request had a `signed_url` (the graph is uploaded when done).
        timings: milliseconds per phase (the synchronous call's Server-Timing).
        result: for a done job: `json_bytes`, `nodes`, `links`, and `upload` when uploaded.
    """

    model_config = ConfigDict(extra="ignore")

    id: str
    status: Status
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    phase: str | None = None
    progress: float = 0.0
    timings: dict[str, float] = Field(default_factory=dict)
    request: JSONObject = Field(default_factory=dict)
    uploads: bool = False
    result: JSONObject | None = None
    error: JobError | None = None


class JobView(BaseModel):
    """GET /graphs/{id}: a job's state now."""

    id: str
    status: Status
    queue_position: int | None = Field(
        None, description="1 = next to run; 0 while running; null once finished"
    )
    phase: str | None = None
    progress: float = Field(0.0, ge=0, le=1)
    cancel_requested: bool = False
    created_at: float = Field(description="seconds since the epoch")
    started_at: float | None = None
    finished_at: float | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="ms per phase")
    slug_identifier: str | None = None
    result: JSONObject | None = None
    error: JobError | None = None
    links: JobLinks


class JobCreated(BaseModel):
    """POST /graphs: the job was queued."""

    id: str
    status: Status
    queue_position: int | None
    links: JobLinks


class JobList(BaseModel):
    """GET /graphs: jobs, newest first."""

    jobs: list[JobView]
    total: int
    offset: int
    limit: int
    next: str | None = Field(None, description="the next page's path, or null on the last")


def links_for(job_id: str) -> JobLinks:
    base = f"/graphs/{job_id}"
    return JobLinks(self=base, events=f"{base}/events", document=f"{base}/document")
