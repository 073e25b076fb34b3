"""PDFs per second: our document path vs raw WeasyPrint on the same HTML, 1 and 2 processes.

- **ours**: `DocumentRenderer.render(view)` (the Jinja2 template, autoescaped, handed to the
  renderer's WeasyPrint worker process with the package-assets-only URL fetcher and the
  timeout) and the PDF stored content-addressed (`store_rendering`, SQLite in a temp folder),
  exactly what a share or an export does after reading the bill;
- **raw**: `weasyprint.HTML(string=html).write_pdf(stylesheets=[css])` in the bench process on
  the very same HTML and stylesheet, with WeasyPrint's defaults: the floor our path adds to.

The bills are made up (1-3 service lines each, deterministic). Each of P processes renders
N/P bills after warming up (imports, fonts, a first render), all starting together; the rate
is N over the wall time from the first start to the last finish. Modes alternate; each is run
`--runs` times and the median printed, with the ratios ours / raw (goal: >= 90 % per process)
and 2 processes / 1 (goal: >= 1.8x).

    .venv/bin/python -m bench.document_rendering [--bills 1000] [--runs 3] [--processes 1 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from datetime import date, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from billing_pipeline.domain.document_views import (
    BillView,
    ClientFacts,
    PracticeFacts,
    ServiceFacts,
    bill_view,
    content_key,
)

PRACTICE = PracticeFacts(
    "Harbor Family Therapy",
    "1245319599",
    "98-7654321",
    "12 Water Street, Suite 4\nBoston, MA 02110",
    "(617) 555-0142",
)
CPTS = [("90837", 18000, "HJ"), ("90834", 15000, ""), ("90785", 2500, ""), ("90832", 9000, "95")]


def make_views(n: int) -> list[BillView]:
    views = []
    for i in range(n):
        client = ClientFacts(f"cl-{i:05d}", f"Client {i:05d}", None, f"{i} Elm Road\nCambridge, MA")
        day = date(2026, 10, 1) + timedelta(days=i % 28)
        services = [
            ServiceFacts(day, cpt, 1 + (i + k) % 2, fee, mods, "11")
            for k, (cpt, fee, mods) in enumerate(CPTS[: 1 + i % 3])
        ]
        views.append(bill_view(PRACTICE, client, i + 1, day, services, paid=i % 2 == 0))
    return views


def _worker(mode: str, n: int, index: int, processes: int, barrier: Barrier, out: Any) -> None:
    from billing_pipeline.resources.renderer import DocumentRenderer, document_html

    views = make_views(n)[index::processes]
    if mode == "ours":
        from sqlalchemy import create_engine

        from billing_pipeline.db.documents import store_rendering
        from billing_pipeline.db.engine import upgrade

        renderer = DocumentRenderer()
        folder = tempfile.mkdtemp()
        engine = create_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        upgrade(engine)
        version = renderer.template_version()
        renderer.render(views[0])  # warm up: the worker's start, fonts

        def one(view: BillView) -> None:
            pdf = renderer.render(view)
            with engine.begin() as conn:
                store_rendering(conn, view, view_id(view), content_key(view, version), pdf)

    else:
        from weasyprint import CSS, HTML

        from billing_pipeline.resources.documents_assets import ASSETS

        css = CSS(string=(ASSETS / "static" / "documents.css").read_text())
        htmls = {id(v): document_html(v) for v in views}
        HTML(string=htmls[id(views[0])]).write_pdf(stylesheets=[css])  # warm up

        def one(view: BillView) -> None:
            HTML(string=htmls[id(view)]).write_pdf(stylesheets=[css])

    barrier.wait()
    start, cpu_start = time.monotonic(), _cpu_seconds(mode)
    for view in views:
        one(view)
    out.put((start, time.monotonic(), _cpu_seconds(mode) - cpu_start))


def _cpu_seconds(mode: str) -> float:
    """CPU time of this process, and of its render worker for `ours` (from /proc)."""
    total = time.process_time()
    if mode == "ours":
        from billing_pipeline.resources.renderer import worker_pid

        pid = worker_pid()
        if pid is not None:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def view_id(view: BillView) -> int:
    return int(view.number.split("-")[1])


def run(mode: str, n: int, processes: int) -> tuple[float, float]:
    """PDFs per second (wall) and per CPU second for `n` bills over `processes` processes."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(mode, n, i, processes, barrier, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    spans = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    wall = max(end for _s, end, _c in spans) - min(start for start, _e, _c in spans)
    return n / wall, n / sum(cpu for _s, _e, cpu in spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bills", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rates: dict[tuple[str, int], list[float]] = {}
    per_cpu: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.runs):
        for processes in args.processes:
            for mode in ("raw", "ours"):
                rate, cpu_rate = run(mode, args.bills, processes)
                rates.setdefault((mode, processes), []).append(rate)
                per_cpu.setdefault((mode, processes), []).append(cpu_rate)
                print(
                    f"  {mode:4s} {processes} process(es): {rate:6.2f} PDFs/s wall, "
                    f"{cpu_rate:6.2f} PDFs per CPU second",
                    flush=True,
                )
    print(f"\n{args.bills} bills per run, median of {args.runs} runs (alternating)")
    med = {k: statistics.median(v) for k, v in rates.items()}
    for (mode, processes), values in sorted(rates.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"{mode:4s} x{processes}   median {med[(mode, processes)]:6.2f} PDFs/s   runs: {shown}"
        )
    cpu_med = {k: statistics.median(v) for k, v in per_cpu.items()}
    for processes in args.processes:
        ours, raw = med[("ours", processes)], med[("raw", processes)]
        ours_cpu, raw_cpu = cpu_med[("ours", processes)], cpu_med[("raw", processes)]
        print(
            f"ours / raw with {processes} process(es): {ours / raw:.1%} wall, "
            f"{ours_cpu / raw_cpu:.1%} per CPU second "
            f"(ours {ours_cpu:.2f}, raw {raw_cpu:.2f} PDFs per CPU second)"
        )
    if 1 in args.processes:
        for processes in args.processes:
            if processes > 1:
                for mode in ("raw", "ours"):
                    ratio = med[(mode, processes)] / med[(mode, 1)]
                    print(f"{mode}: {processes} processes / 1: {ratio:.2f}x")


if __name__ == "__main__":
    main()
