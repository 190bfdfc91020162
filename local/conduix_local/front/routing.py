"""API Gateway routing: a request path matched against the template's routes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from conduix_local.functions import FunctionSpec, Route


@dataclass(frozen=True)
class RouteMatch:
    function: str
    route: Route
    path_parameters: dict[str, str]


class Router:
    """API Gateway resource matching: literal segments beat {param}, which beats {proxy+}."""

    def __init__(self, functions: Iterable[FunctionSpec]) -> None:
        self._routes: list[tuple[str, Route, list[str]]] = []
        seen: dict[tuple[str, str], str] = {}
        for spec in functions:
            for route in spec.routes:
                key = (route.method, route.path_template)
                if key in seen:
                    raise ValueError(f"route {key} declared by both {seen[key]} and {spec.logical_id}")
                seen[key] = spec.logical_id
                self._routes.append((spec.logical_id, route, _segments(route.path_template)))

    def resolve(self, method: str, raw_path: str) -> tuple[RouteMatch | None, list[str]]:
        """(match, []) on success; (None, allowed methods) for a 405; (None, []) for a 404."""
        raw_segs = _segments(raw_path)
        best: tuple[tuple[int, ...], str] | None = None
        candidates: list[tuple[str, Route, dict[str, str]]] = []
        for fn, route, tmpl in self._routes:
            hit = _match_segments(tmpl, raw_segs)
            if hit is None:
                continue
            rank = (hit[0], route.path_template)
            if best is None or rank[0] < best[0]:
                best, candidates = rank, []
            if rank == best:
                candidates.append((fn, route, hit[1]))
        for wanted in (method, "ANY"):
            for fn, route, params in candidates:
                if route.method == wanted:
                    return RouteMatch(fn, route, params), []
        return None, sorted({r.method for _, r, _ in candidates})


def _segments(path: str) -> list[str]:
    # API Gateway routes "/v1/models/" like "/v1/models".
    path = path.rstrip("/") if path != "/" else path
    return path.split("/")[1:] if path not in ("", "/") else []


def _match_segments(tmpl: list[str], raw: list[str]) -> tuple[tuple[int, ...], dict[str, str]] | None:
    rank: list[int] = []
    params: dict[str, str] = {}
    for i, t in enumerate(tmpl):
        if t.startswith("{") and t.endswith("+}"):
            if i >= len(raw):  # a greedy parameter needs at least one segment
                return None
            params[t[1:-2]] = "/".join(unquote(s) for s in raw[i:])
            rank.append(2)
            return tuple(rank), params
        if i >= len(raw):
            return None
        if t.startswith("{") and t.endswith("}"):
            params[t[1:-1]] = unquote(raw[i])
            rank.append(1)
        elif t == unquote(raw[i]):
            rank.append(0)
        else:
            return None
    return (tuple(rank), params) if len(tmpl) == len(raw) else None
