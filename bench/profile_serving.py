"""Where a prediction's CPU goes: the graph's per-request path, stage by stage.

    .venv/bin/python bench/profile_serving.py [--iterations 300]
    flock /tmp/conflict-ray.lock .venv/bin/python bench/profile_serving.py --replicas 10 [--items 50]

In-process (the default; no Ray, no HTTP): the serving benchmark's store, model and request
bodies (:mod:`bench_serve`), and each stage a request passes through, timed by CPU time
(``time.process_time``) over ``--iterations`` calls, for 1-item and 50-item requests and for
the 8-request batch a FeatureLookup replica typically coalesces:

    parse     JSON → validated ``PredictItem`` objects (``serve_app.schemas``)
    features  ``OnlineFeatureLookup.compute_many`` (event window, ``conflict_core.features``)
    predict   the model's ``predict_proba``: scikit-learn, and the compiled form (``training.compiled``)
    respond   response bodies, log records and rendered bytes (the ingress's ``_respond``, ``serve_app.rendering``)

then one cProfile of the whole path on 50-item requests, its top functions printed and the
profile written under ``bench/results/`` (``snakeviz``/``pstats`` read it).

``--replicas SECONDS``: starts the Serve graph as ``bench_serve.py`` does, drives it with wrk
and records every Ingress, FeatureLookup and ModelInference replica with ``py-spy`` for that
long; one speedscope file per replica under ``bench/results/`` (open in speedscope.app).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_serve  # noqa: E402  (the serving benchmark's store, model and bodies)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def _cpu_ms(call: Callable[[], object], iterations: int) -> float:
    call()  # warm: lazy imports, caches
    started = time.process_time()
    for _ in range(iterations):
        call()
    return (time.process_time() - started) / iterations * 1000


class _NoMetric:
    def inc(self, *args: object, **kwargs: object) -> None:
        pass


def _respond_function() -> Callable[..., list[dict[str, Any]]]:
    """The ingress's ``_respond`` bound to a stand-in replica (no Ray metrics, records dropped)."""
    from serve_app.ingress import Ingress

    replica = types.SimpleNamespace(
        medium=0.2,
        high=0.5,
        metrics=types.SimpleNamespace(predictions=_NoMetric(), fallbacks=_NoMetric()),
        writer=types.SimpleNamespace(submit=lambda records: None),
    )
    respond: Callable[..., list[dict[str, Any]]] = Ingress.func_or_class._respond  # type: ignore[attr-defined]
    return lambda *args: respond(replica, *args)


def in_process(database_url: str, work: Path, iterations: int) -> None:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from conflict_core.store import utcnow
    from serve_app.feature_lookup import OnlineFeatureLookup
    from serve_app.inference import load_model
    from serve_app.rendering import features_json, item_reasons, render_predictions
    from serve_app.schemas import NUL_ESCAPE, parse_json, parse_predict_body

    threadpool_limits(limits=1)  # as ModelInference
    bench_serve._seed_store(database_url)
    artifact, sha = bench_serve._artifact(work)
    model = load_model("v_bench", artifact, sha)
    sklearn_model = type(model)(model.version, model.sha256, model.estimator, model.feature_columns, model.column_index)
    lookup = OnlineFeatureLookup(database_url, refresh_interval_s=0.5)
    respond = _respond_function()
    print(f"model: {type(model.estimator).__name__}, compiled: {model.compiled is not None}")

    def parse(body: bytes) -> tuple[list[Any], bool]:
        return parse_predict_body(parse_json(body, max_bytes=2_000_000), max_items=500, may_hold_nul=NUL_ESCAPE in body)

    def targets(items: list[Any]) -> list[dict[str, Any]]:
        now = utcnow()
        return [
            {
                "user_id": i.user_id,
                "entity_type": i.entity_type,
                "entity_id": i.entity_id,
                "changed_fields": i.changed_fields,
                "at": i.at or now,
            }
            for i in items
        ]

    feature_params = asdict(model.feature_params)

    def render(items: list[Any], matrix: np.ndarray, scored: tuple[np.ndarray, list[list[str]]], single: bool) -> bytes:
        """The ingress's answer to scored items: bodies, log records, reasons in words, bytes."""
        probabilities, factors = scored
        values = matrix.tolist()
        features = features_json(values)
        responses = respond(items, features, probabilities, "v_bench", None, utcnow(), 0.2, 0.5)
        return render_predictions(responses, features, single, item_reasons(items, values, factors, feature_params))

    def stages(size: int) -> dict[str, tuple[float, float]]:
        """CPU ms per call of each stage for ``size``-item requests, and per 8-request batch (or NaN)."""
        path = work / f"bodies_{size}.jsonl"
        bench_serve._bodies(path, size)
        bodies = [line.encode() for line in path.read_text().splitlines()]
        parsed = [parse(b) for b in bodies]
        requests = [targets(items) for items, _ in parsed]
        matrices = [lookup.compute_many([r])[0] for r in requests[:50]]
        batches = [requests[k : k + 8] for k in range(0, 48, 8)]
        big = np.concatenate(lookup.compute_many(batches[0]))
        counter = iter(range(10**9))

        def nth(values: list[Any]) -> Any:
            return values[next(counter) % len(values)]

        calls: dict[str, tuple[Callable[[], object], Callable[[], object] | None]] = {
            "parse (json + pydantic)": (lambda: parse(nth(bodies)), None),
            "features (compute_many)": (
                lambda: lookup.compute_many([nth(requests)]),
                lambda: lookup.compute_many(nth(batches)),
            ),
            "predict, scikit-learn": (
                lambda: sklearn_model.predict_proba(nth(matrices)),
                lambda: sklearn_model.predict_proba(big),
            ),
            "predict, compiled": (lambda: model.predict_proba(nth(matrices)), lambda: model.predict_proba(big)),
            "predict + factors, compiled": (
                lambda: model.predict_with_factors(nth(matrices)),
                lambda: model.predict_with_factors(big),
            ),
            "respond + render": (
                lambda: render(parsed[0][0], matrices[0], model.predict_with_factors(matrices[0]), parsed[0][1]),
                None,
            ),
        }
        return {
            name: (
                _cpu_ms(one, iterations),
                float("nan") if batch is None else _cpu_ms(batch, max(iterations // 4, 20)),
            )
            for name, (one, batch) in calls.items()
        }

    try:
        one_item_costs, fifty_costs = stages(1), stages(50)
        print(f"{'stage':<28} {'1 item':>10} {'50 items':>10} {'8 x 50':>10}   (CPU ms per call)")
        for name, (one_item, _) in one_item_costs.items():
            print(f"{name:<28} {one_item:10.3f} {fifty_costs[name][0]:10.3f} {fifty_costs[name][1]:10.3f}")

        # The whole path of 50-item requests under cProfile.
        bodies = [line.encode() for line in (work / "bodies_50.jsonl").read_text().splitlines()]
        profile = cProfile.Profile()
        profile.enable()
        for body in bodies[: max(iterations // 2, 50)]:
            items, single = parse(body)
            matrix = lookup.compute_many([targets(items)])[0]
            render(items, matrix, model.predict_with_factors(matrix), single)
        profile.disable()
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"profile_serving_{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.prof"
        profile.dump_stats(out)
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
        print("\n50-item requests, whole path, top functions by own time:")
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000])
        print(f"profile: {out}")
    finally:
        lookup.close()


def _replica_pids() -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for name in ("Ingress", "FeatureLookup", "ModelInference"):
            if command.startswith(f"ray::ServeReplica:conflict_predictor:{name}"):
                pids.setdefault(name, []).append(int(entry.name))
    return pids


def top_frames(path: Path, count: int = 12) -> list[tuple[float, float, str]]:
    """(own %, inclusive %, frame) of the busiest frames in a py-spy speedscope file, all threads together."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    own: dict[int, float] = {}
    inclusive: dict[int, float] = {}
    total = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            total += weight
            if stack:
                own[stack[-1]] = own.get(stack[-1], 0.0) + weight
            for frame in set(stack):
                inclusive[frame] = inclusive.get(frame, 0.0) + weight

    def name(k: int) -> str:
        f = frames[k]
        return f"{f['name']} ({Path(f.get('file', '?')).name}:{f.get('line', '?')})"

    ranked = sorted(own, key=lambda k: -own[k])[:count]
    return [(100 * own[k] / total, 100 * inclusive[k] / total, name(k)) for k in ranked]


def replicas(work: Path, seconds: float, items: int, connections: int, mode: str) -> None:
    import ray
    from ray import serve

    from ray_control.instance import serve_env
    from ray_control.serve_deploy import deploy_config

    os.environ.update(serve_env(mode))
    url = f"sqlite:///{work / 'store.db'}"
    bench_serve._seed_store(url)
    artifact, sha = bench_serve._artifact(work)
    bench_serve._bodies(work / f"bodies_{items}.jsonl", items)
    lua = work / f"post_{items}.lua"
    lua.write_text(bench_serve.LUA % (work / f"bodies_{items}.jsonl"))
    config = bench_serve.bench_config(REPO / "serve_config.yaml", url, work, artifact, sha)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        deploy_config(config)
        bench_serve._wait_http("http://127.0.0.1:8000", timeout_s=180)
        bench_serve._wrk("http://127.0.0.1:8000", lua, connections, bench_serve.WARMUP_S)
        load = subprocess.Popen(
            [
                "wrk",
                "-t",
                str(min(2, connections)),
                "-c",
                str(connections),
                "-d",
                f"{int(seconds) + 2}s",
                "--latency",
                "-s",
                str(lua),
            ]
            + ["http://127.0.0.1:8000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        RESULTS.mkdir(exist_ok=True)
        stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
        recorders = []
        for name, pids in sorted(_replica_pids().items()):
            for k, pid in enumerate(pids):
                out = RESULTS / f"pyspy_{name}_{k}_{items}items_{stamp}.speedscope.json"
                command = [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "-p",
                    str(pid),
                    "-d",
                    str(int(seconds)),
                    "-r",
                    "100",
                ]
                command += ["-f", "speedscope", "-o", str(out), "--nonblocking"]
                recorders.append((out, subprocess.Popen(command, stdout=subprocess.DEVNULL)))
        for out, recorder in recorders:
            recorder.wait()
            print(f"\nflame graph: {out}\n  own %  incl %  frame (samples of every thread, idle waits included)")
            for own, inclusive, frame in top_frames(out) if out.exists() else []:
                print(f"  {own:5.1f}  {inclusive:5.1f}  {frame}")
        result = bench_serve._parse_wrk(load.communicate()[0])
        print(f"load while recording: {json.dumps(result)}")
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--replicas", type=float, default=0.0, help="Seconds of py-spy per replica under load.")
    parser.add_argument("--items", type=int, default=50, help="Items per request under --replicas.")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections under --replicas.")
    parser.add_argument("--mode", choices=bench_serve.MODES, default="haproxy")
    a = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {sys.platform}, Python {sys.version.split()[0]}", flush=True)
    with tempfile.TemporaryDirectory(prefix="profile_serving_") as tmp:
        if a.replicas > 0:
            replicas(Path(tmp), a.replicas, a.items, a.connections, a.mode)
        else:
            in_process(f"sqlite:///{Path(tmp) / 'store.db'}", Path(tmp), a.iterations)


if __name__ == "__main__":
    main()
