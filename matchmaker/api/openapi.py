"""The OpenAPI 3.1 document of /api/v1, generated from the declared routes.

Nothing here is written by hand: paths, parameters, body schemas and access rules come from the
same `route` declarations that the server runs, so the document cannot drift from the server.
"""

from __future__ import annotations

import re
from typing import Any

from ..access import RULES
from . import schemas
from .framework import PASSKEY_HEADER, ROUTES, Route

_STATUS_TEXT = {400: "the request is malformed; the error says which field and how to fix it",
                401: "no token, or the token is unknown or expired",
                403: "the caller may not do this",
                404: "no such object",
                409: "the object's state does not allow this (e.g. a void passkey)",
                413: "the body is too large"}


def _path(route: Route) -> str:
    return re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", route.path)


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.handler.__name__.strip("_"),
        "summary": route.summary,
        "tags": [route.tag],
        "responses": {str(route.status): {"description": "success", "content": (
            {route.text.split(";")[0]: {"schema": {"type": "string"}}} if route.text else
            {"application/json": {"schema": route.response or {"type": "object"}}})}},
    }
    for status, (when, schema) in route.answers.items():
        op["responses"][str(status)] = {"description": when,
                                        "content": {"application/json": {"schema": schema}}}
    if route.description:
        op["description"] = route.description
    if route.passkey:
        op["security"] = [{"passkey": []}]
    elif route.action is not None:
        op["security"] = [{"token": []}]
        op["x-floe-roles"] = sorted(RULES[route.action])
    else:
        op["security"] = [{}, {"token": []}]
    params = []
    for param in route.params:
        entry = {"name": param.name, "in": param.where, "required": param.where == "path",
                 "schema": param.schema()}
        if param.doc:
            entry["description"] = param.doc
        params.append(entry)
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": route.body}}}
    elif route.raw_body:
        op["requestBody"] = {"required": True,
                             "content": {"text/plain": {"schema": {"type": "string"}}}}
    for status in route.errors:
        op["responses"][str(status)] = {
            "description": _STATUS_TEXT[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return op


def document(version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(_path(route), {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "floe matchmaker API", "version": version,
                 "description": "Datasets, tasks, pilots and sites of a floe matchmaker. Every "
                                "error is JSON {\"error\": \"...\"} with a 4xx status."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {"Error": schemas.ERROR},
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer",
                          "description": "a user, site or pilot token (floe_u_/floe_s_/floe_p_)"},
                "passkey": {"type": "apiKey", "in": "header", "name": PASSKEY_HEADER,
                            "description": "the passkey handed out with the attempt"},
            },
        },
    }
