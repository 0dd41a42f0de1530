"""Uploads of graphs to presigned URLs: the SSRF guard, the slots and spool, the PUT."""
