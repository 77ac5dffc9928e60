"""Thin, typed clients of one external system each.

httpx logs every request URL at INFO; some URLs carry short-lived signatures
(GitHub's job-log download links), so its logger is kept at WARNING.
"""

import logging

logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)
