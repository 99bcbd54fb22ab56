"""Run a protocol: every method × pair × seed whose data is present, resumable.

Each run has its own directory ``OUT/SOURCE-TARGET/METHOD/seedK``; a run whose
``metrics.json`` exists is finished and is read, not redone, so an interrupted benchmark
resumes. Pairs whose data is missing stay in the table as "data missing".

With ``jobs > 1`` the runs go that many at a time in worker processes, the machine's threads
shared among them: small networks use a CPU better as several one-thread runs side by side
than as one run over all cores. SA runs wait for the source-only runs whose networks they
reuse.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transferkit.benchmarks.protocols import PairProtocol, Protocol
from transferkit.checks import PredictionShares
from transferkit.errors import DataMissingError, TransferkitError


@dataclass
class RunOptions:
    seeds: int = 3
    epochs: int | None = None  # override the protocol's budget (e.g. for a quick demo)
    device: str = "auto"
    data_root: str | None = None
    progress: bool = True
    oracle_seeds: int | None = None  # seeds of the train-on-target reference (default: seeds)
    jobs: int = 1  # runs at a time, in worker processes that share the machine's threads
    report_only: bool = False  # train nothing: report the finished runs found in the folder
    machine: str | None = None  # the report's machine line (default: this machine, or the runs')
    keep_epochs: bool = False  # each run keeps every epoch's model (RUN/epochs/), see fit()
    select: str | None = None  # a label-free validator chooses each run's epoch (adapt --select)
    input_norm: str | None = None  # overrides the pairs' input normalization (adapt --input-norm)


def _machine(jobs: int = 1) -> str:
    from transferkit.training.device import describe_machine

    threads = _threads_per_job(jobs)
    plural = "s" if threads != 1 else ""
    runs = f"{jobs} runs at a time × " if jobs > 1 else ""
    return describe_machine(threads=f"{runs}{threads} thread{plural}")


def _pair_available(pair: PairProtocol, data_root: str | None) -> str | None:
    """None when all the pair's splits are present, else what is missing."""
    from transferkit.data.loading import locate
    from transferkit.data.root import resolve_data_root
    from transferkit.data.sources import get_source

    root = resolve_data_root(data_root)
    needed = [(pair.source, "train"), (pair.target, "train"), (pair.target, "test")]
    for name, split in needed:
        try:
            locate(get_source(name), split, root, allow_download=False)
        except DataMissingError as exc:
            return str(exc)
    return None


def _run_dir(out: Path, pair: PairProtocol, method: str, seed: int) -> Path:
    return out / f"{pair.source}-{pair.target}" / method / f"seed{seed}"


def run_one(pair: PairProtocol, method: str, seed: int, out: Path,
            options: RunOptions) -> dict[str, Any]:
    from transferkit.api import DomainAdapter, check_same_run, default_geometry

    run_dir = _run_dir(out, pair, method, seed)
    init_from = None
    candidate = _run_dir(out, pair, "source_only", seed)
    if method == "sa" and (candidate / "metrics.json").is_file():
        init_from = candidate / "model.safetensors"  # SA aligns the source-only network's features
    on_backbone = pair.backbone is not None
    adapter = DomainAdapter(
        method=method, network=None if on_backbone else pair.network,
        backbone=pair.backbone, unfreeze=pair.unfreeze, image_size=pair.image_size,
        epochs=options.epochs or pair.epochs, steps_per_epoch=pair.steps_per_epoch,
        seed=seed, device=options.device, run_dir=run_dir, data_root=options.data_root,
        init_from=init_from, binarize_source=pair.binarize_source,
        geometry=pair.geometry or default_geometry(pair.source, pair.target),
        ema_decay=pair.ema_decay, progress=options.progress, keep_epochs=options.keep_epochs,
        input_norm=options.input_norm or pair.input_norm, select=options.select,
    )
    finished = run_dir / "metrics.json"
    if finished.is_file():  # kept only when it is this protocol's run, not one of other settings
        check_same_run(run_dir, adapter.run_settings(pair.source, pair.target, pair.image_size))
        return json.loads(finished.read_text())
    adapter.fit(pair.source, pair.target)
    return adapter.results_


def _threads_per_job(jobs: int) -> int:
    import torch

    return max(1, torch.get_num_threads() // jobs)


def _worker_start(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_in_worker(pair: PairProtocol, method: str, seed: int, out: Path,
                   options: RunOptions) -> tuple[str, Any]:
    try:
        return "ok", run_one(pair, method, seed, out, options)
    except TransferkitError as exc:  # a plain message crosses the process boundary intact
        return "error", str(exc)


def _task_seeds(method: str, options: RunOptions) -> range:
    if method == "target_only" and options.oracle_seeds is not None:
        return range(options.oracle_seeds)
    return range(options.seeds)


def run_parallel(pairs: list[PairProtocol], methods: list[str], out: Path,
                 options: RunOptions) -> None:
    """Run every unfinished run of ``pairs`` × ``methods``, ``options.jobs`` at a time.

    SA is held back until the source-only run of its pair and seed has finished, so that it
    aligns that network's features (as the serial order does) instead of training its own.
    """
    from tqdm import tqdm

    pending = [(pair, method, seed) for pair in pairs for method in methods
               for seed in _task_seeds(method, options)
               if not (_run_dir(out, pair, method, seed) / "metrics.json").is_file()]
    if not pending:
        return
    quiet = replace(options, progress=False)

    def blocked(task: tuple[PairProtocol, str, int]) -> bool:
        pair, method, seed = task  # SA waits for its source-only network
        return method == "sa" and any(
            p.key == pair.key and m == "source_only" and k == seed
            for p, m, k in [*pending, *running.values()])

    finished: queue.SimpleQueue = queue.SimpleQueue()
    running: dict[int, tuple[PairProtocol, str, int]] = {}
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's thread pools
    # Leaving the ``with`` block terminates the workers, on an error or Ctrl-C included: a run
    # killed mid-epoch resumes from its last checkpoint next time.
    with context.Pool(options.jobs, initializer=_worker_start,
                      initargs=(_threads_per_job(options.jobs),)) as pool, \
            tqdm(total=len(pending), desc=f"runs ({options.jobs} at a time)", unit="run",
                 disable=not options.progress) as bar:
        number = 0
        while pending or running:
            for task in [t for t in pending if not blocked(t)]:
                if len(running) >= options.jobs:
                    break
                pending.remove(task)
                number += 1
                running[number] = task
                pool.apply_async(_run_in_worker, (*task, out, quiet),
                                 callback=lambda result, n=number: finished.put((n, result)),
                                 error_callback=lambda exc, n=number: finished.put(
                                     (n, ("error", repr(exc)))))
            try:
                done, (status, value) = finished.get(timeout=1.0)
            except queue.Empty:
                continue
            pair, method, seed = running.pop(done)
            if status == "error":
                raise TransferkitError(f"{pair.key} {method} seed {seed}: {value}")
            bar.update()
            bar.write(f"{pair.source} → {pair.target} {method} seed {seed}: target-test "
                      f"accuracy {value['target_test_accuracy']:.4f} "
                      f"({value['wall_seconds']:.0f} s)")
        # All done: let the workers exit on their own and clean up after themselves (a
        # 3-job run ended with "leaked semaphore objects" warnings when they were terminated;
        # not reproduced on small data, so this is hygiene, not a verified fix).
        pool.close()
        pool.join()


def _finished(out: Path, pair: PairProtocol, method: str, seed: int) -> bool:
    return (_run_dir(out, pair, method, seed) / "metrics.json").is_file()


def _recorded_machine(pairs: list[PairProtocol], methods: list[str], out: Path,
                      options: RunOptions) -> str:
    """The machine line of a report of finished runs: ``options.machine`` if given, else the
    one machine every run recorded (runs made before runs recorded it need ``--machine``)."""
    if options.machine:
        return options.machine
    recorded = {json.loads((_run_dir(out, p, m, k) / "metrics.json").read_text()).get("machine")
                for p in pairs for m in methods for k in _task_seeds(m, options)
                if _finished(out, p, m, k)}
    if not recorded:
        raise TransferkitError(f"{out}: no finished runs to report (expected "
                               "PAIR/METHOD/seedK/metrics.json folders)")
    if len(recorded) != 1 or None in recorded:
        raise TransferkitError(f"{out}: the runs do not name one machine they ran on; "
                               "describe it with --machine")
    return recorded.pop()


def summarize(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_protocol(protocol: Protocol, pairs: list[PairProtocol], methods: list[str], out: Path,
                 options: RunOptions, command: str = "") -> dict[str, Any]:
    from transferkit.benchmarks.plot import plot_accuracies

    out.mkdir(parents=True, exist_ok=True)
    missing_by_pair = {pair.key: None if options.report_only  # reports runs, reads no data
                       else _pair_available(pair, options.data_root) for pair in pairs}
    if options.report_only:
        options = replace(options, machine=_recorded_machine(pairs, methods, out, options))
    elif options.jobs > 1:
        run_parallel([p for p in pairs if missing_by_pair[p.key] is None], methods, out, options)
    rows = []
    for pair in pairs:
        missing = missing_by_pair[pair.key]
        for method in methods:
            row: dict[str, Any] = {
                "source": pair.source, "target": pair.target, "method": method,
                "paper": pair.paper.get(method), "note": pair.note,
            }
            if missing:
                row.update(status="data missing", detail=missing)
                rows.append(row)
                continue
            seeds = list(_task_seeds(method, options))
            if options.report_only:  # the seeds that finished, wherever they ran
                seeds = [k for k in seeds if _finished(out, pair, method, k)]
                if not seeds:
                    continue  # the table says "not run"
            runs = [run_one(pair, method, seed, out, options) for seed in seeds]
            accuracies = [r["target_test_accuracy"] for r in runs]
            mean, std = summarize(accuracies)
            rates = [r["images_per_second"] for r in runs if r.get("images_per_second")]
            row.update(
                status="measured", accuracies=accuracies, mean=mean, std=std,
                seeds=seeds, epochs=runs[0]["epochs"],
                selected_by=runs[0]["selected_by"], oracle=runs[0]["oracle"],
                source_test_accuracy=summarize(
                    [r["source_test_accuracy"] for r in runs if r["source_test_accuracy"]])[0],
                wall_seconds=[r["wall_seconds"] for r in runs],
                images_per_second=statistics.median(rates) if rates else None,
                data_fraction=statistics.median(
                    [r["data_fraction"] for r in runs if r.get("data_fraction") is not None]
                ) if rates else None,
                peak_memory_mb=max(r["peak_memory_mb"] for r in runs),
                threads=[r.get("threads") for r in runs],  # None: made before runs recorded it
                device=runs[0]["device"],
            )
            if method == "sa":
                row["sa_dimension"] = [r.get("sa_dimension") for r in runs]
                if all("sa_oracle_target_test" in r for r in runs):
                    row["sa_oracle"] = _sa_oracle(runs)
            if all("label_free_check" in r for r in runs):  # runs made before it lack it
                row["label_free_check"] = [
                    {"seed": k, "total_variation": r["label_free_check"]["total_variation"],
                     "flagged": PredictionShares.from_dict(r["label_free_check"]).message()}
                    for k, r in zip(seeds, runs, strict=True)]
            if all("last_epoch_weights" in r for r in runs):  # the model is a weight average
                last = [r["last_epoch_weights"]["target_test_accuracy"] for r in runs]
                last_mean, last_std = summarize(last)
                row["last_epoch_weights"] = {"accuracies": last, "mean": last_mean,
                                             "std": last_std}
            rows.append(row)
            _write(protocol, pairs, methods, rows, out, options, command)
    report = _write(protocol, pairs, methods, rows, out, options, command)
    plot_accuracies(protocol, pairs, methods, report, out / "accuracies.png")  # once, at the end
    return report


def _sa_oracle(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """SA as the paper chose its subspace size — the best target-test accuracy over the
    sizes (the smaller size on a tie) — from what each run recorded. An oracle, for the
    report only: the runs' own size was chosen on source data."""
    best = [min(r["sa_oracle_target_test"].items(), key=lambda kv: (-kv[1], int(kv[0])))
            for r in runs]
    mean, std = summarize([accuracy for _, accuracy in best])
    return {"dimensions": [int(d) for d, _ in best],
            "accuracies": [accuracy for _, accuracy in best], "mean": mean, "std": std}


def _write(protocol: Protocol, pairs: list[PairProtocol], methods: list[str],
           rows: list[dict[str, Any]], out: Path, options: RunOptions,
           command: str) -> dict[str, Any]:
    from transferkit.benchmarks.table import render_table

    report = {"protocol": protocol.name, "title": protocol.title, "command": command,
              "machine": options.machine or _machine(options.jobs), "seeds": options.seeds,
              "rows": rows}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    (out / "table.md").write_text(render_table(protocol, pairs, methods, report))
    return report
