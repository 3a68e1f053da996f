"""`python -m conjure sts`: the benchmark run, from data to table, resumable and shardable.

    python -m conjure sts --datasets stsb --baselines --data-dir DIR --json out.json
    accelerate launch --num_processes 4 -m conjure sts --datasets all --model sd-v1-4 --json out.json

For each method: read which pairs the score cache lacks, split them between the
processes (accelerate's PartialState; one process without `accelerate launch`),
score them in batches, committing each batch to the cache. Then the main process
reads every score back from the cache, computes the correlations and writes the
table and the JSON report. A rerun of the same command recomputes nothing.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from conjure.options import add_batch_size_option, add_estimator_options, add_model_options, model_from, settings_from
from conjure.errors import ConjureError
from conjure.sts.data import DATASETS, check_template, load_dataset, parse_dataset_names, prepare_texts, subsample
from conjure.sts.methods import BASELINES, METHODS, parse_method_names
from conjure.sts.report import dataset_result, markdown, mean_over_datasets
from conjure.sts.store import ScoreStore, default_cache_path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sts", help="Spearman correlation with human similarity on STS-B, STS12-16, SICK-R and MEN",
        description="Evaluate a model on the STS test sets and MEN's word pairs: Spearman (and Pearson) correlation "
                    "x100 between human similarity (MEN: relatedness) and -D_J, beside text-embedding baselines. "
                    "Scores are cached, so an interrupted run resumes; under `accelerate launch` the pairs are "
                    "sharded across processes.")
    p.add_argument("--datasets", default="stsb",
                   help=f"comma-separated: {', '.join(DATASETS)}, or all (the STS test sets; default: stsb)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the test files (sts-test.csv, SentEval STS12-16 folders, SICK.txt, "
                        "MEN_dataset_lemma_form.dev/.test); "
                        "default: $CONJURE_STS_DATA, else ./data, else MTEB's copies on the Hugging Face hub")
    p.add_argument("--methods", default="conjure", help=f"comma-separated: {', '.join(METHODS)} (default: conjure)")
    p.add_argument("--baselines", action="store_true", help=f"add the baselines: {', '.join(BASELINES)}")
    p.add_argument("--limit", type=int, default=None, help="a fixed-seed random subsample of N pairs per dataset")
    p.add_argument("--add-full-stop", action="store_true",
                   help="append '.' to sentences that do not end in punctuation (as the authors' earlier STS code)")
    p.add_argument("--template", default=None, metavar="TEXT",
                   help='put every text in this template before any method sees it, "{}" where the text goes, '
                        'e.g. "an emoji of a {}" for MEN\'s single words on the embedded model (default: none)')
    add_batch_size_option(p)
    p.add_argument("--cache", default=None,
                   help="score cache (SQLite) that makes runs resumable; "
                        f"default: $CONJURE_STS_CACHE or {default_cache_path()}")
    p.add_argument("--json", metavar="OUT", default=None, help="write the full report (JSON) here")
    p.add_argument("--markdown", metavar="OUT", default=None, help="write the tables (Markdown) here too")
    p.add_argument("--ablation", action="store_true",
                   help="also print the paper's ablation (weighting x direction x steps) from the same run's kept "
                        "per-step gaps, with the share of the score its largest step carries")
    add_model_options(p)
    add_estimator_options(p)
    p.set_defaults(func=cmd_sts)


# --- pieces of the run ------------------------------------------------------------------------


def score_pending(method, pairs: list[tuple[str, str]], store: ScoreStore, progress: bool) -> None:
    """Score pairs in batches; each batch is committed before the next starts."""
    from tqdm.auto import tqdm

    with tqdm(total=len(pairs), unit="pair", desc=method.name, disable=not progress or not pairs,
              file=sys.stderr, smoothing=0.1) as bar:
        for i in range(0, len(pairs), method.batch_size):
            batch = pairs[i : i + method.batch_size]
            store.put(method.key, batch, method.score(batch))
            bar.update(len(batch))


def build_methods(names: list[str], args, device: str | None) -> tuple[list, object]:
    """The method objects, loading the diffusion model only if a method needs it."""
    from conjure.models import pick_device
    from conjure.sts.methods import ConjureCosineMethod, ConjureMethod, MiniLMMethod, TextEncoderMethod

    model = None
    if {"conjure", "conjure-cosine", "text-encoder"} & set(names):
        model = model_from(args, device)
    methods = []
    for name in names:
        if name == "conjure":
            methods.append(ConjureMethod(model, settings_from(args), args.batch_size))
        elif name == "conjure-cosine":
            methods.append(ConjureCosineMethod(model, settings_from(args), args.batch_size))
        elif name == "text-encoder":
            methods.append(TextEncoderMethod(model))
        elif name == "minilm":
            methods.append(MiniLMMethod(device=model.device if model is not None else pick_device(device)))
    return methods, model


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str, processes: int) -> dict:
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = f"{cpu_name()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"
    return {
        "device": device, "device_name": f"{processes} × {name}" if processes > 1 else name, "processes": processes,
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
    }


def command_line(args, datasets: list[str], methods: list[str]) -> str:
    """The run as one explicit command: every option that affects the figures spelled out."""
    from conjure.models import default_model

    parts = ["python", "-m", "conjure", "sts", "--datasets", ",".join(datasets), "--methods", ",".join(methods)]
    if args.data_dir:
        parts += ["--data-dir", str(args.data_dir)]
    if args.limit:
        parts += ["--limit", str(args.limit)]
    if args.add_full_stop:
        parts.append("--add-full-stop")
    if args.template:
        parts += ["--template", args.template]
    if getattr(args, "ablation", False):
        parts.append("--ablation")
    if {"conjure", "conjure-cosine", "text-encoder"} & set(methods):
        parts += ["--model", args.model or default_model()] + (["--dtype", args.dtype] if args.dtype else [])
        parts += ["--compile"] if args.compile else []
    if {"conjure", "conjure-cosine"} & set(methods):
        s = settings_from(args)
        parts += ["--steps", str(s.steps), "--samples", str(s.samples), "--guidance", str(s.guidance),
                  "--seed", str(s.seed), "--eta", str(s.eta), "--weighting", s.weighting]
        parts += (["--batch-size", str(args.batch_size)] if args.batch_size else []) + \
            (["--size", str(s.size)] if s.size else [])
    if args.json:
        parts += ["--json", str(args.json)]
    return shlex.join(parts)


def write_atomic(path: str, text: str) -> None:
    """Write via a temporary file and a rename, so a reader never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def build_report(args, data, methods, model, scores, counts, processes: int, cache: str) -> dict:
    """The JSON report: figures per dataset and method, and everything needed to reproduce them."""
    import conjure

    results = {
        d.name: {"title": d.title, "pairs": len(d), "source": d.source, "notes": d.notes,
                 "methods": {m.name: dataset_result(d, scores[m.name]) for m in methods}}
        for d in data
    }
    conjure_method = next((m for m in methods if m.name in ("conjure", "conjure-cosine")), None)
    model_info = None
    if model is not None:
        identity = next(m.identity["model"] for m in methods if m.name in ("conjure", "conjure-cosine", "text-encoder"))
        model_info = {"name": model.name, "weights": identity["weights"], "dtype": identity["dtype"],
                      "compiled": getattr(model, "compiled", False), "device": str(model.device)}
    device = str(model.device) if model is not None else str(methods[0].encoder.device)
    return {
        "command": command_line(args, list(results), [m.name for m in methods]),
        "conjure_version": conjure.__version__,
        "model": model_info,
        "settings": {"estimator": asdict(conjure_method.settings) if conjure_method else None,
                     "batch_size": conjure_method.batch_size if conjure_method else None,
                     "add_full_stop": args.add_full_stop, "template": args.template, "limit": args.limit,
                     "cache": cache},
        "methods": {m.name: {"description": m.description, "key": m.key, "identity": m.identity, **counts[m.name]}
                    for m in methods},
        "datasets": results,
        "mean": {m.name: mean_over_datasets(results, m.name) for m in methods},
        "hardware": hardware(device, processes),
    }


# --- the run -------------------------------------------------------------------------------


def cmd_sts(args) -> int:
    from accelerate import PartialState

    import conjure

    start = time.perf_counter()
    dataset_names = parse_dataset_names(args.datasets)
    method_names = parse_method_names(args.methods, args.baselines)
    if args.limit is not None and args.limit < 1:
        raise ConjureError(f"--limit must be at least 1, got {args.limit}")
    template = check_template(args.template)

    data = []
    for name in dataset_names:
        d = subsample(load_dataset(name, args.data_dir), args.limit)
        data.append(prepare_texts(d, add_full_stop=args.add_full_stop, template=template))
    pairs = list(dict.fromkeys(p for d in data for p in d.pairs))  # every distinct pair once

    # On a machine without CUDA, processes started by torchrun/mpirun shard over CPU (gloo); with
    # CUDA, each process of `accelerate launch --multi_gpu` drives its own GPU.
    state = PartialState(cpu=(args.device or "").startswith("cpu") or not torch.cuda.is_available())
    device = str(state.device) if state.num_processes > 1 else args.device  # one device per launched process
    methods, model = build_methods(method_names, args, device)
    store = ScoreStore(args.cache or default_cache_path())
    counts = {}
    try:
        with warnings.catch_warnings():
            # truncation is counted and reported in the table, not warned about prompt by prompt
            warnings.simplefilter("ignore", conjure.PromptTruncatedWarning)
            for method in methods:
                store.register(method.key, method.identity)
                pending = store.missing(method.key, pairs)
                counts[method.name] = {"cached": len(pairs) - len(pending), "computed": len(pending)}
                if state.is_main_process:
                    where = f" on {state.num_processes} processes" if state.num_processes > 1 else ""
                    print(f"{method.name}: {len(pairs) - len(pending)} of {len(pairs)} distinct pairs cached, "
                          f"{len(pending)} to score{where}", file=sys.stderr)
                state.wait_for_everyone()  # every process has read the same pending list before anyone writes
                with state.split_between_processes(pending) as shard:
                    score_pending(method, shard, store, progress=state.is_main_process)
                state.wait_for_everyone()
    except KeyboardInterrupt:
        print(f"finished batches are kept in {store.path}; rerun the same command to resume", file=sys.stderr)
        raise
    if not state.is_main_process:
        store.close()
        return 0

    scores = {m.name: m.read(store.get(m.key)) for m in methods}
    store.close()
    report = build_report(args, data, methods, model, scores, counts, state.num_processes, str(store.path))
    report["wall_seconds"] = time.perf_counter() - start
    table = markdown(report)
    conjure_method = next((m for m in methods if m.name == "conjure"), None)
    if args.ablation and conjure_method is None:
        raise ConjureError("--ablation needs the conjure method (add --methods conjure)")
    if args.ablation:
        from conjure.sts.ablation import ablation, ablation_markdown

        report["ablation"] = {}
        for d in data:
            rows = scores["conjure"]
            result = ablation(d.gold, [rows[p].details["per_step"] for p in d.pairs], conjure_method.settings.eta)
            report["ablation"][d.name] = result
            table += "\n" + ablation_markdown(d.title, result)
    print(table)
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=2, default=str) + "\n")
    if args.markdown:
        write_atomic(args.markdown, table)
    return 0
