"""Every error answer is an OpenAI error object with the right status and param, and the server keeps serving
after each one (every case is followed by a successful request)."""
from __future__ import annotations

import json

import httpx
import pytest

from tests_server_cases import ERROR_CASES  # noqa: F401  (placeholder removed below)
