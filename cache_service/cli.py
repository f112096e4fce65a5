"""The service's own commands, ``smartcache serve``, ``status`` and ``stop``: the status API's life
cycle and a terminal view of it, registered on the ``smartcache`` parser by :func:`register`.

Parsing and wiring only; the API lives in :mod:`cache_service.api`, the caches in the
service internals, and this module imports nothing else (not the SDK, not the trainer).
Failures are the project's errors (:class:`~cache_service.api.errors.ApiError`,
:class:`~common.errors.ClusterUnavailableError`), which ``smartcache`` prints as
``error: ...`` with exit status 2. The modules that import Ray are imported by the commands
that talk to the cluster, so ``smartcache status`` and ``--help`` never load Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import unicodedata
from typing import Any

import httpx

from cache_service.api.errors import ApiError
from cache_service.api.settings import DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_PORT, TOKEN_ENV, URL_ENV, ApiSettings
from common.catalog import fingerprint, load_catalog
from common.config import load_config
from common.errors import CacheUnavailableError

HTTP_TIMEOUT_S = 10.0


def _connect_ray(address: str | None) -> None:
    """Join a running cluster (``--address``, else ``$RAY_ADDRESS``, else ``auto``): the API and the caches
    are detached actors that outlive this command, so starting a cluster of our own would be useless."""
    from cache_service.cluster import join_or_start  # Ray: only for the commands that talk to the cluster

    join_or_start(address or "auto", log_to_driver=False)


def _token(args: argparse.Namespace) -> str | None:
    return args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None


# ---- serve ---------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from cache_service.api import server  # Ray and uvicorn: only for the commands that need them

    settings = ApiSettings(host=args.host, port=args.port, token=_token(args), namespace=args.namespace).check()
    if args.demo:
        return _serve_demo(settings)
    _connect_ray(args.address)
    if args.data:
        _start_cache(args)
    if args.foreground:
        url = server.public_url(settings)
        print(f"serving {url} (namespace '{settings.namespace}'), dashboard {_dashboard_hint(url, settings)}; "
              "Ctrl-C stops it")
        server.serve_foreground(settings)
        return 0
    url = server.start_api(settings.host, settings.port, settings.token, settings.namespace)
    print(f"status API running at {url} (actor '{server.API_ACTOR}' in namespace '{settings.namespace}')")
    print(f"dashboard: {_dashboard_hint(url, settings)}   metrics: {url}/metrics   stop it with: smartcache stop")
    return 0


def _dashboard_hint(url: str, settings: ApiSettings) -> str:
    """How to open the page; with a token, in the URL fragment (the browser never sends it) or in the page's form.
    The token itself is not printed: it would end up in logs."""
    if not settings.token:
        return f"{url}/"
    return f"{url}/#token=<your token> (or open {url}/ and enter it)"


def _start_cache(args: argparse.Namespace) -> None:
    """Create (or attach to) the cache for a dataset and config, and wait until it is warm."""
    from cache_service.client import get_or_create_cache, wait_until_ready  # Ray: see _connect_ray

    cfg = load_config(args.config, [f"data.dataset_dir={args.data}", f"cache.namespace={args.namespace}",
                                    *args.overrides])
    catalog = load_catalog(cfg.data.dataset_dir, cfg.data)
    fp = fingerprint(catalog, cfg.preprocessing)
    status = wait_until_ready(get_or_create_cache(catalog, cfg.cache_side, fp, seed=cfg.training.seed))
    print(f"cache {fp}: {status.items_cached} training and {status.val_items_cached} validation volumes "
          f"({status.bytes_cached / 2**20:.0f} MiB) in namespace '{args.namespace}'")


def _serve_demo(settings: ApiSettings) -> int:
    """Example data, no Ray: for looking at the dashboard before any cache runs."""
    import uvicorn  # uvicorn + FastAPI (these imports): only for the command that serves

    from cache_service.api import create_app
    from cache_service.api.samples import cache_status
    from cache_service.api.source import InMemorySource

    url = f"http://{settings.host}:{settings.port}"
    print(f"serving example data at {_dashboard_hint(url, settings)} ; Ctrl-C stops it")
    uvicorn.run(create_app(InMemorySource([cache_status()]), settings), host=settings.host, port=settings.port,
                log_level="warning")
    return 0


# ---- status --------------------------------------------------------------------------------
def _get(url: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(url, headers=headers, timeout=HTTP_TIMEOUT_S)
    except httpx.HTTPError as err:
        raise ApiError(f"cannot reach the status API at {url} ({type(err).__name__}: {err}); "
                       f"is `smartcache serve` running? (--url or {URL_ENV} to point elsewhere)") from err
    if r.status_code == 401:
        raise ApiError(f"{url}: 401 unauthorized; pass --token or set {TOKEN_ENV}")
    if r.status_code != 200:
        raise ApiError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
    return r.json()


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _cache_lines(c: dict[str, Any]) -> list[str]:
    lines = [f"cache {c['fingerprint']}  {c['state']}  pool {c['items_cached']}/{c['capacity']} of "
             f"{c['train_items']} items  {_mib(c['bytes_cached'])} / {_mib(c['byte_budget'])}  "
             f"generation {c['generation']}  rotations {c['rotations']}  replacements "
             f"{c['replacements_pending']} pending, {c['replacements_ready']} ready  "
             f"validation {c['val_items_cached']}/{c['val_items_total']}  quarantined {len(c['quarantined'])}"]
    uses = c.get("use_counts", {})
    lines.append("  pool, oldest first (uses): " + " ".join(f"{i}({uses.get(i, 0)})" for i in c["pool"]))
    if c.get("budget_message"):
        lines.append(f"  budget: {c['budget_message']}")
    lines.append(f"  restarts: cache {c.get('restarts', 0)}")
    if c.get("last_fault"):
        lines.append("  last fault: " + _fault_text(c["last_fault"]))
    lines += [f"  quarantined {q['item_id']}: {q['error']}" for q in c["quarantined"]]
    return lines


def _fault_text(f: dict[str, Any]) -> str:
    lost = "" if f.get("seconds_lost") is None else f", {f['seconds_lost']:.1f} s lost"
    epoch = "" if f.get("epoch") is None else f" at epoch {f['epoch']}"
    return f"{f['kind']}{epoch}{lost}: {f.get('cause', '')}"


def _experiment_lines(experiments: list[dict[str, Any]]) -> list[str]:
    if not experiments:
        return ["  no experiment attached"]
    return _experiment_table(experiments) + [
        f"  {e['experiment_id']} last fault: {_fault_text(e['last_fault'])}" for e in experiments if e.get("last_fault")]


def _experiment_table(experiments: list[dict[str, Any]]) -> list[str]:
    rows = [("EXPERIMENT", "EPOCH", "RATIO", "POS%", "DICE", "r_FP", "r_FN", "RESTARTS c/t/v")]
    for e in experiments:
        last = e["sampler_history"][-1] if e["sampler_history"] else None
        fmt = (lambda k: f"{last[k]:.3f}") if last else (lambda k: "-")
        rows.append((e["experiment_id"], str(e["epoch"]), f"{e['ratio']:.3f}",
                     f"{100 * e['ratio'] / (1 + e['ratio']):.0f}%", fmt("mean_dice"), fmt("r_fp"), fmt("r_fn"),
                     "/".join(str(e.get("restarts", {}).get(k, 0)) for k in ("cache", "trainer", "validator"))))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return ["  " + "  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(r, widths)))
            for r in rows]


def printable(text: str) -> str:
    """``text`` with control and format characters (ESC, CR, bidi overrides...) written as escapes, so an id
    chosen by someone else cannot move the cursor, recolour or rewrite the operator's terminal."""
    return "".join(repr(ch)[1:-1] if unicodedata.category(ch).startswith("C") else ch for ch in text)


def format_status(caches: list[dict[str, Any]]) -> str:
    """The /cache answer as a readable table (one block per cache); every line goes through :func:`printable`."""
    if not caches:
        return "no cache is running in this namespace"
    blocks = ["\n".join(map(printable, _cache_lines(c) + _experiment_lines(c["experiments"]))) for c in caches]
    return "\n\n".join(blocks)


def cmd_status(args: argparse.Namespace) -> int:
    caches = _get(args.url.rstrip("/") + "/cache", _token(args))
    print(json.dumps(caches, indent=2) if args.json else format_status(caches))
    return 0


# ---- stop ----------------------------------------------------------------------------------
def _attached(namespace: str) -> list[str]:
    """``cache <fingerprint>: <experiment id>`` for every experiment attached to a cache of ``namespace``."""
    from cache_service.api.ray_source import RaySource  # Ray: see _connect_ray

    try:
        caches = RaySource(namespace).caches()
    except CacheUnavailableError as err:  # cannot tell who is attached: only --force may stop it
        return [f"(unknown: {err})"]
    return [f"cache {c.fingerprint}: {e.experiment_id}" for c in caches for e in c.experiments]


def cmd_stop(args: argparse.Namespace) -> int:
    from cache_service.api.server import API_ACTOR, stop_api  # Ray: see _connect_ray
    from cache_service.client import stop_caches

    _connect_ray(args.address)
    attached = [printable(a) for a in _attached(args.namespace)]
    if attached and not args.force:
        raise ApiError(f"{len(attached)} experiment(s) are attached in namespace '{args.namespace}' and would lose "
                       f"their cache: {'; '.join(attached)}. Let them finish, or stop anyway with --force")
    if attached:
        print(f"detaching {len(attached)} experiment(s): {'; '.join(attached)}")
    stopped = [API_ACTOR] if stop_api(args.namespace) else []
    stopped += stop_caches(args.namespace)
    print(f"stopped {', '.join(stopped)}" if stopped else f"nothing running in namespace '{args.namespace}'")
    return 0


# ---- parsers -------------------------------------------------------------------------------
def _namespace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE,
                   help=f"Ray namespace of the caches (cache.namespace in the config; default {DEFAULT_NAMESPACE})")


def _token_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the REST status API and dashboard",
                       description="Start the status API (JSON, Prometheus /metrics, HTML dashboard at /) as the "
                                   "detached Ray actor 'smartcache-api' on this node, or in this process with "
                                   "--foreground. It binds 127.0.0.1 unless --host says otherwise; any other "
                                   f"address needs a token (--token or ${TOKEN_ENV}), which every endpoint but "
                                   "/healthz then requires as 'Authorization: Bearer <token>'.")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    _token_arg(p)
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or auto)")
    _namespace_arg(p)
    p.add_argument("--foreground", action="store_true", help="serve in this process until Ctrl-C")
    p.add_argument("--demo", action="store_true", help="serve example data without Ray (preview the dashboard)")
    p.add_argument("--data", default=None, help="also start (or attach to) the cache for this MSD dataset")
    p.add_argument("--config", default=None, help="experiment YAML whose preprocessing and cache settings to use")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (with --data); repeatable")
    p.set_defaults(handler=cmd_serve)


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show the caches and experiments (from the status API)",
                       description="Fetch GET /cache from the status API and print each cache (pool, bytes, "
                                   "rotations, replacements, quarantine) and its experiments (epoch, ratio, "
                                   "last Dice, r_FP, r_FN) as a table, or as JSON with --json.")
    p.add_argument("--url", default=os.environ.get(URL_ENV, f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"),
                   help=f"status API URL (default ${URL_ENV} or http://{DEFAULT_HOST}:{DEFAULT_PORT})")
    _token_arg(p)
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.set_defaults(handler=cmd_status)


def _add_stop(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stop", help="stop the status API and every cache in the namespace",
                       description="Stop the 'smartcache-api' actor and every cache actor (smartcache-<fingerprint>) "
                                   "in the namespace; the object-store copies they own are freed. While experiments "
                                   "are attached it lists them and stops nothing unless --force is given.")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or auto)")
    _namespace_arg(p)
    p.add_argument("--force", action="store_true",
                   help="stop even while experiments are attached (they are listed; their runs lose the cache)")
    p.set_defaults(handler=cmd_stop)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``status`` and ``stop`` to the ``smartcache`` parser."""
    _add_serve(sub)
    _add_status(sub)
    _add_stop(sub)
