"""Benchmark: the Medical-Necessity twin, in process and over HTTP.

(a) The median in-process time of ``assess`` for one order whose criteria are all coded (goal:
    under 5 ms), the patient's record built once (ingestion is benchmarked elsewhere), pathway
    facts evaluated from scratch each run: a constructed EGFR-positive stage IV NSCLC record with a
    draft osimertinib order, the same as a FHIR Bundle ingested once, and real Synthea patients.
(b) ``POST /necessity/v1/evaluate`` on the embedded default (``oncotwin up``: gunicorn, one
    process, gthread) started on a free local port in a temporary ``ONCOTWIN_DATA_DIR`` with a
    token from its local key, under 20 concurrent closed-loop clients: throughput and p50/p95/p99
    latency (goal: p99 under 50 ms) for the constructed Bundle (one order, ~3 KiB) and, for
    reference, a real Synthea Bundle (ingestion-bound). Load generator: Locust (headless,
    FastHttpUser) when it is installed, else a thread per client over its own ``requests.Session``.

Prints figures only; no assertions. ``--generator threads|locust`` forces one.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the record builders and the constructed Bundle live with the tests

from bench.pathway_queries import median_ms  # noqa: E402
from graph.networkx_store import NetworkXPathwayStore  # noqa: E402
from graph.queries import PathwayQueries  # noqa: E402
from services.medical_necessity.engine import assess, orders_to_review  # noqa: E402
from shared.auth import LocalKeys  # noqa: E402
from shared.config import load_settings  # noqa: E402
from shared.fhir.ingest import load_bundle, load_path  # noqa: E402
from shared.fhir.record import Order, PatientRecord  # noqa: E402
from tests.builders import order_for, patient  # noqa: E402
from tests.test_necessity_api import egfr_bundle  # noqa: E402

SYNTHEA = ROOT.parent / "shared" / "data" / "fhir" / "synthea"
RUNS = 2000
CONSTRUCTED_ORDER = "MedicationRequest/order-1"
LOCUSTFILE = """
import os
from locust import FastHttpUser, constant, task

BODY = open(os.environ["BENCH_BODY"], "rb").read()
HEADERS = {"Authorization": "Bearer " + os.environ["BENCH_TOKEN"], "Content-Type": "application/fhir+json"}


class Clinician(FastHttpUser):
    wait_time = constant(0)

    @task
    def evaluate(self):
        self.client.post(os.environ["BENCH_PATH"], data=BODY, headers=HEADERS, name="evaluate")
"""


def in_process() -> None:
    queries = PathwayQueries(NetworkXPathwayStore.load())
    constructed = patient("nsclc", stage="IV", markers={"EGFR": "positive"})
    cases: list[tuple[str, PatientRecord, Order]] = [
        ("constructed EGFR+ stage IV NSCLC record, osimertinib", constructed, order_for("osimertinib")),
    ]
    ingested = load_bundle(json.dumps(egfr_bundle())).record()
    cases.append(("constructed Bundle (ingested once), osimertinib", ingested, orders_to_review(ingested)[0]))
    for name, drug in (("Micah_Schinner", "oxaliplatin"), ("Sherman_McGlynn", "docetaxel")):
        found = list(SYNTHEA.glob(f"{name}_*.json"))
        if not found:
            continue
        record = load_path(found[0]).records[0]
        order = next(o for o in orders_to_review(record) if drug in o.ingredients)
        cases.append((f"{name.split('_')[0]} (Synthea), {drug}", record, order))
    print(f"(a) assess, one order, coded criteria, no judge needed; median over {RUNS} runs (goal < 5 ms)")
    for label, record, order in cases:
        result = assess(record, queries, [order]).determinations[0]
        ms = median_ms(lambda r=record, o=order: assess(r, queries, [o]), RUNS)
        with_json = median_ms(lambda r=record, o=order: assess(r, queries, [o]).to_json(), RUNS // 4)
        verdict = "meets" if ms < 5 else "misses"
        print(
            f"    {label}: {ms:.3f} ms ({verdict} the goal; {with_json:.3f} ms with to_json) "
            f"-> {result.determination} on {result.pathway}"
        )


# --- (b) HTTP ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``oncotwin up`` in a child process, with its own data dir (local key) and a token for it."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "ONCOTWIN_DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING", **(extra_env or {})}
        env.pop("LLM_BASE_URL", None)  # coded criteria only: no LLM round trips in the figures
        settings = load_settings(env)
        keys = LocalKeys(settings.data_dir)
        keys.ensure()
        self.token = keys.mint(
            "bench", ["necessity.read"], 3600, issuer=settings.token_issuer, audience=settings.token_audience
        )
        self.log = (data_dir / "server.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oncotwin.cli", "up", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the embedded server did not come up within 60 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def threads_load(url: str, body: bytes, token: str, clients: int, seconds: float) -> dict[str, Any]:
    """Closed-loop clients, one thread and one keep-alive ``requests.Session`` each."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    start_at = time.perf_counter() + 0.5
    end_at = start_at + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        with requests.Session() as session:
            barrier.wait()
            while (now := time.perf_counter()) < end_at:
                response = session.post(url, data=body, headers=headers, timeout=60)
                done = time.perf_counter()
                if now >= start_at:
                    latencies[i].append(done - now)
                    failures[i] += response.status_code != 200

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = sorted(x for per in latencies for x in per)
    if not flat:
        return {"requests": 0, "failures": 0, "rps": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}

    def pct(p: float) -> float:
        return flat[min(len(flat) - 1, max(0, round(p / 100 * len(flat)) - 1))] * 1000

    return {
        "requests": len(flat),
        "failures": sum(failures),
        "rps": len(flat) / seconds,
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
    }


def locust_load(url: str, body: bytes, token: str, clients: int, seconds: float, work: Path) -> dict[str, Any]:
    """Locust, headless, FastHttpUser, closed loop (no wait), stats reset once every user runs."""
    base, path = url.split("/necessity/", 1)
    (work / "locustfile.py").write_text(LOCUSTFILE)
    (work / "body.json").write_bytes(body)
    env = {**os.environ, "BENCH_BODY": str(work / "body.json"), "BENCH_TOKEN": token}
    env["BENCH_PATH"] = f"/necessity/{path}"
    prefix = work / "locust"
    subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", str(work / "locustfile.py"), "--headless", "--only-summary",
            "-u", str(clients), "-r", str(clients), "--run-time", f"{int(seconds)}s", "--reset-stats",
            "--host", base, "--csv", str(prefix), "--loglevel", "WARNING",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=seconds + 60,
    )  # fmt: skip
    with open(f"{prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        "p50": float(row["50%"]),
        "p95": float(row["95%"]),
        "p99": float(row["99%"]),
    }


def open_loop(
    url: str,
    body: bytes,
    token: str | list[str],
    rate: float,
    seconds: float,
    content_type: str = "application/fhir+json",
) -> dict[str, Any]:
    """Requests sent at a fixed arrival rate whatever the answers do (open loop): each latency counts from
    the moment its request was due, so a slow server cannot hide its queue (no coordinated omission).
    ``token``: one bearer token, or one per request (CDS Hooks JWTs are single-use), signed beforehand."""
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()
    tokens = token if isinstance(token, list) else None

    def send(due: float, n: int) -> tuple[float, bool]:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        bearer = tokens[n] if tokens is not None else token
        headers = {"Authorization": f"Bearer {bearer}", "Content-Type": content_type}
        ok = session.post(url, data=body, headers=headers, timeout=60).ok
        return time.perf_counter() - due, ok

    count = int(rate * seconds)
    with ThreadPoolExecutor(max_workers=64) as pool:
        start = time.perf_counter() + 0.1
        futures = []
        for i in range(count):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # the schedule, not a timing assertion
            futures.append(pool.submit(send, due, i))
        results = [f.result() for f in futures]
    elapsed = time.perf_counter() - start
    latencies = sorted(1000 * latency for latency, _ in results)
    return {
        "rate": rate,
        "achieved": count / elapsed,
        "requests": count,
        "failures": sum(1 for _, ok in results if not ok),
        "p50": latencies[len(latencies) // 2],
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        "p99": latencies[int(0.99 * (len(latencies) - 1))],
    }


OPEN_LOOP = {  # scenario index -> (arrival rate per second, p99 goal in ms), from issue 18
    0: (100.0, 50.0),
    1: (20.0, 300.0),
}


CDS_ISSUER = "https://ehr.example.org"
CDS_RATE, CDS_GOAL = 20.0, 300.0


def cds_order_sign(seconds: float) -> None:
    """(d) CDS Hooks ``order-sign`` with a full Synthea record as prefetch (an EHR's call before signing),
    at a fixed 20/s; each call carries its own ES384 JWT (unique jti: the service refuses replays)."""
    import uuid

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from tests.test_cds_hooks import bundle, hook_body, prefetch, server_style

    micah = list(SYNTHEA.glob("Micah_Schinner_*.json"))
    if not micah:
        print("(d) CDS Hooks order-sign: skipped (no Synthea data)")
        return
    resources = server_style(micah[0])
    pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    stored = next(
        r
        for r in resources
        if r["resourceType"] == "MedicationRequest" and "oxaliplatin" in json.dumps(r.get("medicationCodeableConcept"))
    )
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "bench", "alg": "ES384", "use": "sig"}
    with tempfile.TemporaryDirectory(prefix="oncotwin-bench-cds-") as tmp:
        jwks = Path(tmp) / "jwks.json"
        jwks.write_text(json.dumps({"keys": [jwk]}))
        probe = free_port()  # the public base URL must be known before the server starts (exact `aud`)
        base = f"http://127.0.0.1:{probe}"
        env = {"CDS_JWKS_FILE": str(jwks), "CDS_ALLOWED_ISSUERS": CDS_ISSUER, "CDS_BASE_URL": base}
        server = Server(Path(tmp), env, port=probe)
        try:
            discovery = requests.get(f"{server.url}/cds-services", timeout=10).json()
            service = next(s for s in discovery["services"] if s["hook"] == "order-sign")
            path = f"/cds-services/{service['id']}"
            signing = {**stored, "id": "draft-1", "status": "draft"}
            body = hook_body(
                "order-sign",
                pid,
                context={"draftOrders": bundle([signing])},
                prefetch=prefetch(service, resources, pid),
            )
            raw = json.dumps(body).encode()
            count = int(CDS_RATE * seconds) + 25

            def token() -> str:
                now = int(time.time())
                claims = {"iss": CDS_ISSUER, "aud": base + path, "iat": now, "exp": now + 600, "jti": str(uuid.uuid4())}
                return jwt.encode(claims, key, algorithm="ES384", headers={"kid": "bench", "typ": "JWT"})

            tokens = [token() for _ in range(count)]
            url = f"{server.url}{path}"
            check = requests.post(
                url, data=raw, headers={"Authorization": f"Bearer {tokens.pop()}", **JSON_TYPE}, timeout=60
            )
            cards = [c["summary"] for c in check.json().get("cards", [])] if check.ok else check.status_code
            for _ in range(20):  # warm: imports, pathways, the first ingestion of this prefetch
                requests.post(
                    url, data=raw, headers={"Authorization": f"Bearer {tokens.pop()}", **JSON_TYPE}, timeout=60
                )
            r = open_loop(url, raw, tokens, CDS_RATE, seconds, content_type="application/json")
            verdict = "meets" if r["p99"] < CDS_GOAL and not r["failures"] else "misses"
            print(
                f"(d) CDS Hooks order-sign, Micah's record as prefetch ({len(raw) / 2**20:.1f} MiB), one draft "
                f"(card: {cards}), at {CDS_RATE:.0f}/s (achieved {r['achieved']:.1f}/s): p50 {r['p50']:.1f} ms, "
                f"p95 {r['p95']:.1f} ms, p99 {r['p99']:.1f} ms ({verdict} the goal p99 < {CDS_GOAL:.0f} ms); "
                f"{r['requests']} requests, {r['failures']} failed"
            )
        finally:
            server.stop()


JSON_TYPE = {"Content-Type": "application/json"}


def over_http(generator: str, clients: int, seconds: float) -> None:
    if generator == "auto":
        generator = "locust" if importlib.util.find_spec("locust") else "threads"
    described = {
        "locust": "Locust (headless, FastHttpUser, no wait time)",
        "threads": "a thread per client over its own requests.Session (no wrk/hey/ab/oha/locust installed)",
    }[generator]
    scenarios: list[tuple[str, bytes, str]] = [
        ("constructed Bundle, 1 order", json.dumps(egfr_bundle()).encode(), CONSTRUCTED_ORDER),
    ]
    micah = list(SYNTHEA.glob("Micah_Schinner_*.json"))
    if micah:
        record = load_path(micah[0]).records[0]
        order = next(o for o in orders_to_review(record) if "oxaliplatin" in o.ingredients)
        size = micah[0].stat().st_size / 2**20
        scenarios.append((f"Micah (Synthea, {size:.1f} MiB), 1 order", micah[0].read_bytes(), order.reference))
    print(
        f"(b) POST /necessity/v1/evaluate on `oncotwin up` (gunicorn gthread, 1 process, 8 threads), "
        f"{clients} concurrent clients, {seconds:.0f} s each (goal p99 < 50 ms); load generator: {described}"
    )
    with tempfile.TemporaryDirectory(prefix="oncotwin-bench-") as tmp:
        server = Server(Path(tmp))
        try:
            headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/fhir+json"}
            for label, body, order in scenarios:
                url = f"{server.url}/necessity/v1/evaluate?order={order}"
                check = requests.post(url, data=body, headers=headers, timeout=60)
                determination = check.json()["determinations"][0]["determination"] if check.ok else check.status_code
                for _ in range(20):  # warm the process: imports, pathway store, caches
                    requests.post(url, data=body, headers=headers, timeout=60)
                if generator == "locust":
                    r = locust_load(url, body, server.token, clients, seconds, Path(tmp))
                else:
                    r = threads_load(url, body, server.token, clients, seconds)
                verdict = "meets" if r["p99"] < 50 else "misses"
                print(
                    f"    {label} ({determination}): {r['rps']:.0f} req/s; p50 {r['p50']:.1f} ms, "
                    f"p95 {r['p95']:.1f} ms, p99 {r['p99']:.1f} ms ({verdict} the goal); "
                    f"{r['requests']} requests, {r['failures']} failed"
                )
            print(
                f"(c) the same, open loop: a fixed arrival rate, latency from each request's due time ({seconds:.0f} s)"
            )
            for index, (label, body, order) in enumerate(scenarios):
                rate, goal = OPEN_LOOP[index]
                url = f"{server.url}/necessity/v1/evaluate?order={order}"
                r = open_loop(url, body, server.token, rate, seconds)
                verdict = "meets" if r["p99"] < goal and not r["failures"] else "misses"
                print(
                    f"    {label} at {rate:.0f}/s (achieved {r['achieved']:.1f}/s): p50 {r['p50']:.1f} ms, "
                    f"p95 {r['p95']:.1f} ms, p99 {r['p99']:.1f} ms ({verdict} the goal p99 < {goal:.0f} ms); "
                    f"{r['requests']} requests, {r['failures']} failed"
                )
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", choices=["auto", "locust", "threads"], default="auto")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--skip-http", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}")
    in_process()
    if not args.skip_http:
        over_http(args.generator, args.clients, args.seconds)
        cds_order_sign(args.seconds)


if __name__ == "__main__":
    main()
