"""The OpenAPI 3.1 document of /api/v1, generated from the declared routes.

Nothing here is written by hand: paths, parameters, body and answer schemas and access rules
come from the same `route` declarations that the server runs, so the document cannot drift from
the server. The answers' schemas that `schemas.NAMED` names are components, referred to where
they occur, so that a client generated from the document has one model for each (a Dataset, a
Task, an Attempt...).
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


_NAMES = {id(schema): name for name, schema in schemas.NAMED.items()}


def _referring(schema: Any, top: bool = True) -> Any:
    """`schema` with each schema of `schemas.NAMED` inside it (and itself, unless `top`)
    replaced by a reference to its component."""
    if not top and id(schema) in _NAMES:
        return {"$ref": f"#/components/schemas/{_NAMES[id(schema)]}"}
    if isinstance(schema, dict):
        return {key: _referring(value, False) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_referring(value, False) for value in schema]
    return schema


def _operation_ids() -> dict[int, str]:
    """Each route's operationId: its handler's name, or, where routes of several tags share
    one (the heartbeat of an attempt and of a pilot), the tag and the name."""
    names = [route.handler.__name__.strip("_") for route in ROUTES]
    return {id(route): name if names.count(name) == 1 else f"{route.tag}_{name}"
            for route, name in zip(ROUTES, names, strict=True)}


def _operation(route: Route, operation_id: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "responses": {str(route.status): {"description": "success", "content": (
            {route.text.split(";")[0]: {"schema": {"type": "string"}}} if route.text else
            {"application/json": {"schema": _referring(route.response or {"type": "object"},
                                                       False)}})}},
    }
    for status, (when, schema) in route.answers.items():
        op["responses"][str(status)] = {
            "description": when, "content": {"application/json": {
                "schema": _referring(schema, False)}}}
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
    """The OpenAPI document of the declared routes, for a server of `version`."""
    paths: dict[str, dict[str, Any]] = {}
    operation_ids = _operation_ids()
    for route in ROUTES:
        paths.setdefault(_path(route), {})[route.method.lower()] = _operation(
            route, operation_ids[id(route)])
    return {
        "openapi": "3.1.0",
        "info": {"title": "floe matchmaker API", "version": version,
                 "description": "Datasets, tasks, pilots and sites of a floe matchmaker. Every "
                                "error is JSON {\"error\": \"...\"} with a 4xx status."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": {name: _referring(schema) for name, schema in schemas.NAMED.items()},
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer",
                          "description": "a user, site or pilot token (floe_u_/floe_s_/floe_p_)"},
                "passkey": {"type": "apiKey", "in": "header", "name": PASSKEY_HEADER,
                            "description": "the passkey handed out with the attempt"},
            },
        },
    }
