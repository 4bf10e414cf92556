"""API keys → tenants, and who may call which route.

Keys: `--api-key KEY` is one tenant ("default"); `--api-key-file FILE` holds one `KEY TENANT` per line (blank lines
and lines starting with '#' skipped), several keys may name the same tenant; `--admin-api-key KEY` is the admin.
Startup refuses an empty or whitespace key, a key with whitespace or control characters, a malformed line, and a
key given twice (in the file, or in the file and a flag). With no key at all every request is the anonymous
tenant and every route is open.

Route classes (when any key is set):
  tenant   inference and read-only routes: any tenant key (or the admin key, as tenant "admin");
  admin    /flush_cache, /update_config and other admin routes: the admin key only; without --admin-api-key, the
           --api-key key (a single-tenant server, as before), and nobody when tenants come from a key file;
  probe    /health and /metrics: open with --metrics-public, else as tenant routes.
Keys are compared as sha256 digests with hmac.compare_digest, so lookup time says nothing about a key's prefix.
The tenant is set on `request.state.tenant` from the key only; no request field can choose it.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from fastapi import Request

from engine.pair.refiner import ANONYMOUS_TENANT
from server.errors import APIError

SINGLE_KEY_TENANT = "default"  # the tenant of --api-key
ADMIN_TENANT = "admin"  # the admin key's requests, when it sends inference requests


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def check_key(key: str, where: str) -> None:
    """ValueError naming `where` for a key that cannot be sent as a Bearer token (the key itself is never shown)."""
    if not key or not key.strip():
        raise ValueError(f"{where}: an API key must not be empty or whitespace")
    if any(c.isspace() for c in key) or not key.isprintable():
        raise ValueError(f"{where}: an API key must not contain whitespace or control characters")


def parse_key_file(text: str, path: str = "<key file>") -> dict[str, str]:
    """`KEY TENANT` lines → {key: tenant}; ValueError naming the line for a malformed line or a duplicate key."""
    keys: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"api_key_file: {path} line {n}: expected 'KEY TENANT'")
        key, tenant = parts
        check_key(key, f"api_key_file: {path} line {n}")
        if not tenant.isprintable():
            raise ValueError(f"api_key_file: {path} line {n}: bad tenant name")
        if key in keys:
            raise ValueError(f"api_key_file: {path} line {n}: duplicate key (first on an earlier line)")
        keys[key] = tenant
    if not keys:
        raise ValueError(f"api_key_file: {path} holds no keys")
    return keys


@dataclass(frozen=True)
class KeyRing:
    """Digests of the tenant keys → tenant, and the admin key's digest (built once at startup)."""

    tenants: Mapping[bytes, str] = field(default_factory=dict)
    admin: bytes | None = None
    admin_via_tenant_key: bool = False  # no admin key and a single --api-key: that key may use admin routes
    metrics_public: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.tenants) or self.admin is not None

    @classmethod
    def from_args(cls, args) -> "KeyRing":
        """Reads --api-key-file (the one I/O here; call at startup). ValueError naming the flag on a bad key."""
        keys: dict[str, str] = {}
        if args.api_key_file is not None:
            try:
                with open(args.api_key_file, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"api_key_file: cannot read {args.api_key_file} ({e})") from None
            keys = parse_key_file(text, args.api_key_file)
        if args.api_key is not None:
            check_key(args.api_key, "api_key")
            if args.api_key in keys:
                raise ValueError("api_key: the same key is also in --api-key-file")
            keys[args.api_key] = SINGLE_KEY_TENANT
        admin = None
        if args.admin_api_key is not None:
            check_key(args.admin_api_key, "admin_api_key")
            if args.admin_api_key in keys:
                raise ValueError("admin_api_key: must differ from every tenant key")
            admin = _digest(args.admin_api_key)
        return cls(MappingProxyType({_digest(k): t for k, t in keys.items()}), admin,
                   admin is None and args.api_key_file is None and args.api_key is not None, args.metrics_public)

    def lookup(self, token: str) -> tuple[str | None, bool]:
        """(tenant or None, is_admin) for a presented key; every stored digest is compared, in constant time."""
        d = _digest(token)
        tenant = None
        for stored, name in self.tenants.items():
            if hmac.compare_digest(stored, d):
                tenant = name
        is_admin = self.admin is not None and hmac.compare_digest(self.admin, d)
        return (ADMIN_TENANT if is_admin else tenant), is_admin or (self.admin_via_tenant_key and tenant is not None)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _unauthorized() -> APIError:
    return APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")


class RouteAuth:
    """FastAPI dependencies for the three route classes; each sets request.state.tenant."""

    def __init__(self, keyring: KeyRing):
        self.keyring = keyring

    def _resolve(self, request: Request) -> tuple[str, bool]:
        if not self.keyring.enabled:
            return ANONYMOUS_TENANT, True
        token = _bearer(request)
        tenant, is_admin = self.keyring.lookup(token) if token is not None else (None, False)
        if tenant is None:
            raise _unauthorized()
        return tenant, is_admin

    async def tenant(self, request: Request) -> None:
        request.state.tenant, _ = self._resolve(request)

    async def admin(self, request: Request) -> None:
        request.state.tenant, is_admin = self._resolve(request)
        if not is_admin:
            raise APIError(403, "this route needs the admin API key (--admin-api-key)", code="admin_key_required")

    async def probe(self, request: Request) -> None:
        if self.keyring.metrics_public:
            request.state.tenant = ANONYMOUS_TENANT
            return
        request.state.tenant, _ = self._resolve(request)


def request_tenant(request: Request) -> str:
    """The tenant the auth dependency resolved for this request (anonymous when no key is configured)."""
    return getattr(request.state, "tenant", ANONYMOUS_TENANT)
