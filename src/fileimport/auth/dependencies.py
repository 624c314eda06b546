"""FastAPI dependencies that authenticate the bearer token and check its scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fileimport.auth.service import Principal, authenticate
from fileimport.core.errors import Forbidden, Unauthorized, ValidationFailed
from fileimport.core.runtime import Runtime

bearer = HTTPBearer(auto_error=False, description="A token from `fileimport token create`.")


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency returning the caller's Principal; 401 without a valid token, 403 without ``scope``,
    400 (`ValidationFailed`) with two ``Authorization`` headers."""

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> Principal:
        if len(request.headers.getlist("Authorization")) > 1:
            # A singleton field (RFC 9110 §11.6.2): which token the client meant is a guess.
            raise ValidationFailed({"Authorization": "must be given once"})
        if credentials is None or not credentials.credentials:
            raise Unauthorized(
                {"message": "missing bearer token"},
                headers={"WWW-Authenticate": "Bearer"},
            )
        runtime = get_runtime(request)
        principal = await runtime.db.run_read(partial(authenticate, token=credentials.credentials))
        if principal is None:
            raise Unauthorized(
                {"message": "invalid or expired token"},
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if scope not in principal.scopes:
            raise Forbidden({"message": f"token lacks scope '{scope}'"})
        return principal

    return dependency
