"""Command line: `python -m conjure score A B`, `score --pairs FILE`, `matrix`, `rank`, `explain`, and `sts` (the
benchmark).

Output contract for scripts: `--json` prints one JSON object per pair with at least
jeffreys, kl_ab, kl_ba, per_step, stderr, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from conjure import sts, validation
from conjure.errors import ConjureError
from conjure.jeffreys import computed_in
from conjure.settings import LIMITS
from conjure.options import (add_batch_size_option, add_cosine_option, add_estimator_options, add_model_options,
                             model_from, settings_from)


def read_pair_lines(path: str) -> list[tuple[int, str, str]]:
    """(line number, text_a, text_b) of each pair in a pairs file, every text checked (see read_pairs)."""
    data = validation.check_input_file(path, "pairs file").read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConjureError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); a pairs file is UTF-8 "
                           "text, one pair per line (text_a<TAB>text_b, or JSON)") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConjureError(f"{path}:{n}: invalid JSON: {err}") from None
            for ka, kb in (("text_a", "text_b"), ("a", "b"), ("sentence1", "sentence2")):
                if isinstance(obj, dict) and ka in obj and kb in obj:
                    a, b = obj[ka], obj[kb]
                    break
            else:
                raise ConjureError(f"{path}:{n}: a JSON line needs text_a and text_b")
        else:
            cols = line.split("\t")
            if len(cols) != 2:
                raise ConjureError(f"{path}:{n}: expected two tab-separated texts, found {len(cols)} columns")
            a, b = cols
        try:
            pairs.append((n, validation.check_prompt(a, "A"), validation.check_prompt(b, "B")))
        except ConjureError as err:
            raise ConjureError(f"{path}:{n}: {err}") from None
    if not pairs:
        raise ConjureError(f"{path}: no pairs")
    return pairs


def read_pairs(path: str) -> list[tuple[str, str]]:
    """TSV lines `text_a<TAB>text_b`, or JSONL objects with text_a/text_b (or a/b, sentence1/sentence2)."""
    return [(a, b) for _, a, b in read_pair_lines(path)]


def result_key(r: dict) -> tuple:
    """What makes two results the same score: the texts, the model, how it computed (dtype, compiled) and the
    estimator settings."""
    return (r["text_a"], r["text_b"], r.get("model"), r.get("dtype"), r.get("compiled", False),
            json.dumps(r.get("settings"), sort_keys=True))


def read_results(path: Path) -> tuple[list[dict], int | None]:
    """The results already in an output file, and the byte offset of a torn last line (a killed write) or None.

    Anything that is not a JSONL file of conjure results is refused: appending to it would mix the two.
    """
    data = path.read_bytes()
    refuse = (f"{path} exists and is not a JSONL file of conjure results, so it cannot be resumed or appended to; "
              "give -o a new file name (or that of an earlier run's output, to resume it)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConjureError(f"{refuse} (not UTF-8 text)") from None
    results, offset, torn = [], 0, None
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        start, offset = offset, offset + len(line.encode("utf-8")) + 1
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the last line, with no newline: a write cut short by a kill
                torn = start
                break
            raise ConjureError(f"{refuse} (line {n} is not JSON)") from None
        if not (isinstance(obj, dict) and {"text_a", "text_b", "jeffreys"} <= set(obj)):
            raise ConjureError(f"{refuse} (line {n} is not a result)")
        results.append(obj)
    return results, torn


def score_output(args) -> tuple[Path | None, list[dict], int | None]:
    """The checked -o file, the results already in it and where a torn last line starts; before any model work."""
    if not args.output:
        return None, [], None
    output = validation.check_output_path(args.output)
    if not (args.pairs and output.exists() and output.stat().st_size):
        return output, [], None
    return (output, *read_results(output))


def cosine_lines(r) -> list[str]:
    """The cosine's lines of a result scored with --cosine; none without it."""
    if r.pulls is None:
        return []
    cosine = "undefined (a text does not move the model)" if r.cosine is None else f"{r.cosine:.4f}"
    if r.cosine_percentile is not None:
        cosine += f", closer than {r.cosine_percentile:.1f}% of random pairs of everyday phrases"
    return [f"  cosine               {cosine}",
            f"  pull from no text    A {r.pulls[0]:.4f}, B {r.pulls[1]:.4f} (nats, weighted as the divergence)"]


def format_result(r) -> str:
    se = f" ± {r.stderr:.4g}" if r.stderr is not None else ""
    if r.percentile is not None:
        scale = f"closer than {r.percentile:.1f}% of random pairs of everyday phrases"
    else:
        scale = "no calibration for these settings (python -m conjure calibrate)"
    lines = [
        f"{r.text_a!r} vs {r.text_b!r}  ({r.model} in {computed_in(r.dtype, r.compiled)}, "
        f"{r.settings['steps']} steps, k={r.settings['samples']}, guidance {r.settings['guidance']:g}, {r.settings['weighting']} weighting)",
        f"  Jeffreys divergence  {r.jeffreys:.4f}{se} nats ({r.jeffreys_per_dim:.3g} per dimension)",
        f"  on a human scale     {scale}",
        *cosine_lines(r),
        *[f"  prompt {which} read as     {text!r} (emoji as words)" for which, text in zip("AB", r.rewritten) if text],
        f"  KL(A||B)             {r.kl_ab:.4f}",
        f"  KL(B||A)             {r.kl_ba:.4f}",
        f"  time                 {r.seconds:.2f} s",
        "  per step (t: KL_AB, KL_BA): " + ", ".join(
            f"{t}: {a:.3g}, {b:.3g}" for t, a, b in zip(r.per_step["timestep"], r.per_step["kl_ab"], r.per_step["kl_ba"])),
    ]
    return "\n".join(lines)


def cmd_score(args) -> int:
    """One pair, or a pairs file. With --pairs, each batch's results are written as soon as they are done, and
    a rerun of the same command into the same -o file skips the pairs already there (resume)."""
    import conjure
    from conjure import calibration, jeffreys

    settings = settings_from(args)
    validation.check_device(args.device)
    validation.check_batch_size(args.batch_size, "--batch-size")
    if args.pairs:
        lines = read_pair_lines(args.pairs)
    elif args.text_a is not None and args.text_b is not None:
        lines = [(0, validation.check_prompt(args.text_a, "A"), validation.check_prompt(args.text_b, "B"))]
    else:
        raise ConjureError("give two texts, or --pairs FILE")
    output, earlier, torn = score_output(args)  # checked before the model loads

    model = model_from(args)
    where = (lambda n: f" on line {n} of {args.pairs}") if args.pairs else (lambda n: "")
    validation.check_readable(model, [(f"prompt {ab}{where(n)}", text)
                                      for n, a, b in lines for ab, text in zip("AB", (a, b))])
    pairs = [(a, b) for _, a, b in lines]
    lower = ("lower --samples, --batch-size or --size" if args.pairs else "lower --samples or --size") + \
        " (or raise CONJURE_MAX_MEMORY_GB)"
    run = validation.check_run(model, settings, pairs=len(pairs), batch_size=args.batch_size, lower=lower,
                               option="--batch-size")
    # checked before scoring: a file for another model or settings is an error
    reference = calibration.find(model, settings, args.calibration)

    def finish(results):
        calibration.set_percentiles(results, reference, settings.weighting)
        return results

    with warnings.catch_warnings():
        warnings.simplefilter("always", conjure.PromptTruncatedWarning)
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        if not args.pairs:
            *_, last = jeffreys.stream(model, *pairs[0], run, previews=False, decode_final=False)
            r = finish([last.result])[0]
            text = json.dumps(r.to_dict()) if args.json else format_result(r)
            if output is None:
                print(text)
            else:
                output.write_text(text + "\n", encoding="utf-8")
            return 0
        todo = pairs_to_score(pairs, earlier, model, settings, output)
        stream_results(todo, output, torn, run.batch_size, lambda batch: finish(jeffreys.score_batch(model, batch, run)))
    return 0


def pairs_to_score(pairs, earlier: list[dict], model, settings, output) -> list[tuple[str, str]]:
    """The pairs not yet in the output (a pair given n times is scored n times); says how many are skipped."""
    from collections import Counter
    from dataclasses import asdict

    from conjure.jeffreys import dtype_name

    done = Counter(result_key(r) for r in earlier)
    settings_json = json.loads(json.dumps(asdict(settings)))
    todo = []
    for a, b in pairs:
        key = result_key({"text_a": a, "text_b": b, "model": model.name, "dtype": dtype_name(model),
                          "compiled": getattr(model, "compiled", False), "settings": settings_json})
        if done[key]:
            done[key] -= 1
        else:
            todo.append((a, b))
    skipped = len(pairs) - len(todo)
    if earlier:
        others = len(earlier) - skipped
        note = (f"; {others} other result{'s' if others != 1 else ''} in it (other pairs, settings or model) "
                "are kept" if others else "")
        print(f"{output}: {skipped} of {len(pairs)} pairs already scored there, skipped; scoring the other "
              f"{len(todo)}{note}", file=sys.stderr)
    return todo


def stream_results(todo, output: Path | None, torn: int | None, batch_size: int, score) -> None:
    """Score `todo` batch by batch, writing each batch's JSON lines as soon as it is done (flushed, and synced
    to disk for a file), so a kill loses at most the batch in flight."""
    from tqdm.auto import tqdm

    if output is not None and torn is not None:
        with open(output, "r+b") as f:  # drop the torn last line of a killed run; its pairs are scored again
            f.truncate(torn)
    if output is not None and output.exists() and output.stat().st_size:
        with open(output, "rb") as f:
            f.seek(-1, os.SEEK_END)
            ends_with_newline = f.read(1) == b"\n"
    else:
        ends_with_newline = True
    out = open(output, "a", encoding="utf-8") if output is not None else sys.stdout
    try:
        if not ends_with_newline:
            out.write("\n")
        with tqdm(total=len(todo), unit="pair", disable=not todo) as bar:
            for i in range(0, len(todo), batch_size):
                batch = todo[i : i + batch_size]
                out.write("".join(json.dumps(r.to_dict()) + "\n" for r in score(batch)))
                out.flush()
                if output is not None:
                    os.fsync(out.fileno())
                bar.update(len(batch))
    finally:
        if output is not None:
            out.close()


def cmd_calibrate(args) -> int:
    import numpy as np

    from conjure import calibration

    if args.pairs < 10:
        raise ConjureError(f"--pairs must be at least 10 for a usable reference distribution, got {args.pairs}")
    settings = settings_from(args)
    if args.output:  # before the scoring, which an unwritable file would otherwise lose
        validation.check_output_path(args.output, "--output")
    model = model_from(args)
    path = Path(args.output) if args.output else calibration.default_path(model)
    result = calibration.calibrate(model, pairs=args.pairs, batch_size=args.batch_size, **vars(settings))
    try:
        calibration.save(result, path)
    except OSError as err:  # e.g. an installed, read-only model folder: keep it in the user's cache
        if args.output:
            raise ConjureError(f"cannot write {path}: {err.strerror}") from None
        path = calibration.save(result, calibration.cache_folder() / f"{calibration.model_digest(model)}.json")
    ref = result.reference(settings.weighting)
    q = np.percentile(ref, [5, 50, 95])
    c = np.percentile(result.reference_cosines(settings.weighting), [5, 50, 95])
    print(f"{len(ref)} random pairs of everyday phrases under {model.name} ({settings.weighting} weighting): "
          f"5% {q[0]:.4g}, median {q[1]:.4g}, 95% {q[2]:.4g} nats; cosine 5% {c[0]:.3f}, median {c[1]:.3f}, "
          f"95% {c[2]:.3f}")
    print(f"wrote {path}")
    return 0


MAX_PHRASES_FILE_BYTES = 1_000_000  # a phrases file bigger than this is a mistake, not a matrix


def read_phrases(path: str) -> list[str]:
    """One phrase per line of a UTF-8 text file (blank lines are skipped later, with repeats)."""
    file = validation.check_input_file(path, "phrases file")
    size = file.stat().st_size
    if size > MAX_PHRASES_FILE_BYTES:
        raise ConjureError(f"{path} is {size / 1e6:.1f} MB; a phrases file (one phrase per line) may be at most "
                           f"{MAX_PHRASES_FILE_BYTES / 1e6:g} MB")
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConjureError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8") from None


def gather_phrases(args, given: list[str]) -> list[str]:
    """Phrases from the command line and --file (blank lines and repeats are dropped later)."""
    return list(given) + (read_phrases(args.file) if args.file else [])


def limits_from(args):
    """The library's limits, with --max-phrases for the phrases of a matrix and the candidates of a ranking."""
    from dataclasses import replace

    if not validation.is_whole(args.max_phrases) or args.max_phrases < 1:
        raise ConjureError(f"--max-phrases must be a positive integer, got {args.max_phrases}")
    return replace(LIMITS, max_phrases=args.max_phrases, max_candidates=args.max_phrases)


def output_path(name: str | None, option: str, suffixes: tuple[str, ...] = ()) -> Path | None:
    """An output file named by an option, opened before any model work; None if not asked for."""
    return None if name is None else validation.check_output_path(name, option, suffixes)


def format_matrix(m) -> str:
    """The matrix as an aligned table, then each phrase's nearest neighbour by the images and by the words."""
    number = lambda v: f"{v:.4g}"  # noqa: E731
    names = [p if len(p) <= 14 else p[:13] + "~" for p in m.phrases]
    width = max(8, *(len(n) for n in names))
    cells = [[number(v) for v in row] for row in m.jeffreys]
    col = max(8, *(len(n) for n in names), *(len(c) for row in cells for c in row))
    s = m.settings
    lines = [f"{len(m.phrases)} phrases, {m.pairs} pair{'s' if m.pairs != 1 else ''} "
             f"({m.model} in {computed_in(m.dtype, m.compiled)}, {s['steps']} steps, k={s['samples']}, "
             f"guidance {s['guidance']:g}, {s['weighting']} weighting), {m.seconds:.1f} s",
             "Jeffreys divergence (nats; smaller = more alike):",
             " " * width + "".join(f"  {n:>{col}}" for n in names)]
    lines += [f"{name:<{width}}" + "".join(f"  {c:>{col}}" for c in row) for name, row in zip(names, cells)]
    if m.cosine is not None:
        lines += ["Cosine of the pulls (larger = more alike):", " " * width + "".join(f"  {n:>{col}}" for n in names)]
        lines += [f"{name:<{width}}" + "".join(f"  {v:>{col}.3f}" for v in row) for name, row in zip(names, m.cosine)]
    by = m.images_measure
    percentiles = m.cosine_percentile if by == "cosine" else m.percentile
    lines.append(f"Nearest neighbour, by the images ({'cosine' if by == 'cosine' else 'Jeffreys'}) and by the "
                 "words (text-encoder cosine):")
    by_text = {p: (q, v) for p, q, v in m.nearest("text")}
    for p, q, v in m.nearest(by):
        percentile = (f", closer than {percentiles[m.phrases.index(p), m.phrases.index(q)]:.0f}% of random pairs"
                      if percentiles is not None else "")
        value = f"cosine {v:.3f}" if by == "cosine" else f"{number(v)} nats"
        lines.append(f"  {p}: {q} ({value}{percentile}) | {by_text[p][0]} (cosine {by_text[p][1]:.3f})")
    if m.duplicates:
        lines.append("repeated, scored once: " + ", ".join(repr(d) for d in m.duplicates))
    if m.percentile is None:
        lines.append("no calibration for these settings, so no percentiles (python -m conjure calibrate)")
    return "\n".join(lines)


def cmd_matrix(args) -> int:
    import conjure
    from conjure import figures, matrix

    limits = limits_from(args)
    phrases, duplicates = matrix.check_phrases(gather_phrases(args, args.phrases), limits, " (--max-phrases)")
    outputs = {"csv": output_path(args.csv, "--csv"), "png": output_path(args.png, "--png", (".png",)),
               "map": output_path(args.map, "--map", (".png",))}
    settings = settings_from(args)
    validation.check_batch_size(args.batch_size, "--batch-size")
    model = model_from(args)
    phrases, run = matrix.check_matrix(model, phrases, settings, batch_size=args.batch_size, limits=limits,
                                       lower="lower --samples, --batch-size or --size, or give fewer phrases",
                                       option="--batch-size")
    with warnings.catch_warnings():
        warnings.simplefilter("once", conjure.PromptTruncatedWarning)
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        m = matrix.collect(matrix.scored_matrix(model, phrases, duplicates, run), progress=True)
    print(json.dumps(m.to_dict()) if args.json else format_matrix(m))
    if outputs["csv"]:
        outputs["csv"].write_text(m.to_csv(), encoding="utf-8")
    if outputs["png"] or outputs["map"]:
        pictures = figures.matrix_figures(m, getattr(model, "text_encoder_name", "text encoder"))
        for key, picture in (("png", "heatmap"), ("map", "map")):
            if outputs[key]:
                pictures[picture].save(outputs[key])
    for path in outputs.values():
        if path:
            print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_rank(args) -> int:
    import conjure
    from conjure import matrix

    query, candidates, repeated = matrix.check_candidates(args.query, gather_phrases(args, args.candidates),
                                                          limits_from(args), " (--max-phrases)")
    if repeated:
        print("repeated, scored once: " + ", ".join(repr(r) for r in repeated), file=sys.stderr)
    settings = settings_from(args)
    validation.check_batch_size(args.batch_size, "--batch-size")
    model = model_from(args)
    pairs = validation.check_pairs([(query, c) for c in candidates], model)
    run = validation.check_run(model, settings, pairs=len(pairs), batch_size=args.batch_size,
                               lower="lower --samples, --batch-size or --size", option="--batch-size")
    with warnings.catch_warnings():
        warnings.simplefilter("once", conjure.PromptTruncatedWarning)
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        ranked = matrix.ranked(model, pairs, run, progress=True)
    if args.json:
        for r in ranked:
            print(json.dumps(r.to_dict()))
        return 0
    print(f"{query!r} against {len(ranked)} candidates ({model.name} in "
          f"{computed_in(ranked[0].dtype, ranked[0].compiled)}, {settings.steps} steps, k={settings.samples}, "
          f"guidance {settings.guidance:g}), most alike first:")
    for n, r in enumerate(ranked, 1):
        if settings.cosine:
            cosine = "undefined" if r.cosine is None else f"{r.cosine:.3f}"
            scale = (f"  closer than {r.cosine_percentile:.1f}% of random pairs"
                     if r.cosine_percentile is not None else "")
            print(f"{n:>4}. cosine {cosine:>9} ({r.jeffreys:.4g} nats)  {r.text_b}{scale}")
            continue
        scale = f"  closer than {r.percentile:.1f}% of random pairs" if r.percentile is not None else ""
        print(f"{n:>4}. {r.jeffreys:>10.4g} nats  {r.text_b}{scale}")
    return 0


def format_explanation(e) -> str:
    """Each prompt with its words' contributions, in prompt order, the largest marked where it is positive."""
    from conjure.attribution import LEAVE_OUT

    se = f" ± {e.stderr:.4g}" if e.stderr is not None else ""
    s = e.settings
    lines = [f"{e.text_a!r} vs {e.text_b!r}  ({e.model} in {computed_in(e.dtype, e.compiled)}, {s['steps']} steps, "
             f"k={s['samples']}, guidance {s['guidance']:g}, {s['weighting']} weighting)",
             f"  Jeffreys divergence  {e.jeffreys:.4f}{se} nats",
             f"  contribution of each word: D_J(A, B) - D_J with the word left out ({LEAVE_OUT[e.leave_out]}); "
             "> 0 pushes the prompts apart"]
    for which, text, words in (("A", e.text_a, e.words_a), ("B", e.text_b, e.words_b)):
        top = e.top_pushing(which)
        lines.append(f"  prompt {which}: {text!r}")
        width = max(len(w.word) for w in words)
        for w in words:
            err = f" ± {w.stderr:.3g}" if w.stderr is not None else ""
            mark = "  <- largest" if w is top else ""
            alone = "  (vs the empty prompt)" if not w.without else ""
            lines.append(f"    {w.word:<{width}}  {w.contribution:+10.4f}{err}{alone}{mark}")
        if top is None:
            lines.append(f"    (no word of {which} pushes the prompts apart: without any one of them they are farther "
                         "apart)")
    lines.append(f"  time                 {e.seconds:.2f} s")
    return "\n".join(lines)


def cmd_explain(args) -> int:
    import conjure
    from conjure import attribution

    attribution.check_words(args.text_a, "A")  # all that needs no model, before it loads
    attribution.check_words(args.text_b, "B")
    settings = settings_from(args)
    validation.check_device(args.device)
    validation.check_batch_size(args.batch_size, "--batch-size")
    model = model_from(args)
    leave_out, run = attribution.check_explain(model, args.text_a, args.text_b, settings, batch_size=args.batch_size,
                                               images=False, leave_out=args.leave_out,
                                               lower="lower --samples, --batch-size or --size, or use fewer words",
                                               option="--batch-size")
    with warnings.catch_warnings():
        warnings.simplefilter("always", conjure.PromptTruncatedWarning)
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        e = attribution.explained(model, args.text_a, args.text_b, run, leave_out=leave_out, images=False)
    print(json.dumps(e.to_dict()) if args.json else format_explanation(e))
    return 0


MORPH_FORMATS = {"gif": ".gif", "mp4": ".mp4", "webm": ".webm"}


def animation_outputs(args) -> list[tuple[str, Path]]:
    """The (animation, file) pairs asked of `morph`, checked before any model work."""
    from conjure import animation

    wanted = [("morph", getattr(args, fmt), suffix) for fmt, suffix in MORPH_FORMATS.items() if getattr(args, fmt)]
    wanted += [("trajectories", path, None) for path in args.trajectories]
    if not wanted:
        raise ConjureError("nothing to write: give --gif, --mp4, --webm and/or --trajectories FILE")
    outputs = []
    for kind, name, suffix in wanted:
        path = Path(name)
        if suffix and path.suffix.lower() != suffix:
            raise ConjureError(f"--{suffix[1:]} needs a file name ending in {suffix}, got {name}")
        if path.suffix.lower() not in animation.ANIMATION_FORMATS:
            raise ConjureError(f"--trajectories {name}: the file name must end in "
                               f"{', '.join(animation.ANIMATION_FORMATS)}")
        reason = animation.video_unavailable() if path.suffix.lower() != ".gif" else None
        if reason:
            raise ConjureError(f"cannot write {name}: {reason}")
        outputs.append((kind, validation.check_output_path(name, f"--{suffix[1:]}" if suffix else "--trajectories")))
    return outputs


def cmd_morph(args) -> int:
    from conjure import animation, jeffreys
    from conjure.morph import check_morph, check_stages, morph_steps

    text_a, text_b = validation.check_pairs([(args.text_a, args.text_b)])[0]
    outputs = animation_outputs(args)
    check_stages(args.stages)
    if args.panel is not None and not 16 <= args.panel <= 4096:
        raise ConjureError(f"--panel must be from 16 to 4096 pixels, got {args.panel}")
    if args.video_scale is not None and not 1 <= args.video_scale <= 8:
        raise ConjureError(f"--video-scale must be from 1 to 8, got {args.video_scale}")
    kinds = {kind for kind, _ in outputs}
    settings = settings_from(args)
    panel = {"panel": args.panel} if args.panel else {}
    model = model_from(args)
    run = check_morph(model, text_a, text_b, args.stages, settings, trajectories="trajectories" in kinds,
                      lower="lower --stages or --size")
    animations = {}
    if "trajectories" in kinds:
        events = list(jeffreys.stream(model, text_a, text_b, run))
        r = events[-1].result
        frames = animation.trajectory_frames([e.image_a for e in events], [e.image_b for e in events],
                                             [e.difference for e in events], r.per_step, args.text_a, args.text_b,
                                             **panel)
        side = args.panel or animation.TRAJECTORY_PANEL
        scale = args.video_scale or animation.video_scale(events[-1].image_a.shape[0], side)
        animations["trajectories"] = frames, animation.trajectory_durations(len(frames)), scale
        print(f"Jeffreys divergence {r.jeffreys:.4f} nats (KL(A||B) {r.kl_ab:.4f}, KL(B||A) {r.kl_ba:.4f})")
    if "morph" in kinds:
        *_, last = morph_steps(model, text_a, text_b, args.stages, run)
        frames = animation.morph_frames(last.images, last.weights, args.text_a, args.text_b, **panel)
        scale = args.video_scale or animation.video_scale(last.images.shape[1], args.panel or animation.MORPH_PANEL)
        animations["morph"] = frames, animation.morph_durations(len(frames)), scale
    for kind, path in outputs:
        frames, durations, scale = animations[kind]
        animation.write_animation(frames, path, durations, scale=scale)
        print(f"wrote {path} ({kind}, {len(frames)} frames, {sum(durations) / 1000:g} s, "
              f"{path.stat().st_size / 1024:.0f} KB)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conjure", description="Semantic similarity by the images texts conjure.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="Jeffreys divergence between two texts, or many pairs from a file")
    p.add_argument("text_a", nargs="?")
    p.add_argument("text_b", nargs="?")
    p.add_argument("--pairs", help="TSV (text_a<TAB>text_b) or JSONL file; prints one JSON line per pair")
    add_batch_size_option(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    p.add_argument("--output", "-o", help="write results here instead of stdout")
    p.add_argument("--calibration", default=None,
                   help="calibration file for the percentile (default: the model's own, or the user's cache)")
    add_model_options(p)
    add_estimator_options(p)
    add_cosine_option(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("calibrate", help="score random pairs of everyday phrases: the reference for percentiles",
                       description="Score a fixed random draw of pairs of everyday phrases under a model and settings, "
                                   "so scores can say 'closer than X%% of random pairs'. Written to the model folder "
                                   "(calibration.json) or the user's cache.")
    p.add_argument("--pairs", type=int, default=300, help="reference pairs to score (default 300)")
    add_batch_size_option(p)
    p.add_argument("--output", "-o", help="calibration file to write (default: beside the model, else the cache)")
    add_model_options(p)
    add_estimator_options(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("morph", help="animate two texts: the morph from one to the other, and both trajectories",
                       description="Sample the same noise under conditioning interpolated from text A to text B and "
                                   "write it as GIF, MP4 (H.264) and/or WebM (VP9); --trajectories also writes both "
                                   "denoising trajectories with the divergence curve (format by file name).")
    p.add_argument("text_a")
    p.add_argument("text_b")
    for fmt in MORPH_FORMATS:
        p.add_argument(f"--{fmt}", metavar="FILE", help=f"write the morph as {fmt.upper() if fmt != 'webm' else 'WebM'}")
    p.add_argument("--trajectories", metavar="FILE", action="append", default=[],
                   help="write both trajectories step by step (.gif, .mp4 or .webm; repeat for several)")
    p.add_argument("--stages", type=int, default=8,
                   help=f"morph stages, from 2 to {LIMITS.max_stages} (default 8)")
    p.add_argument("--panel", type=int, default=None,
                   help="side of each image in the frames, in pixels (default: 256 for the morph, 160 for the "
                        "trajectories; small images are enlarged by nearest neighbour, so they stay crisp)")
    p.add_argument("--video-scale", type=int, default=None,
                   help="enlarge the MP4 and WebM frames this many times by nearest neighbour (default: 2 when "
                        "the pictures are pixel art, enlarged at least twofold in the frames, as the app does; else 1)")
    add_model_options(p)
    add_estimator_options(p)
    p.set_defaults(func=cmd_morph)

    p = sub.add_parser("matrix", help="the Jeffreys matrix of many phrases, nearest neighbours, heatmap and map",
                       description="Score every pair of the phrases once (in batches) and print the N x N Jeffreys "
                                   "matrix and each phrase's nearest neighbour, beside the text encoder's; "
                                   "optionally write it as CSV, a heatmap PNG and a 2-D map of meanings.")
    p.add_argument("phrases", nargs="*", metavar="PHRASE")
    p.add_argument("--file", help="more phrases, one per line (UTF-8; blank lines and repeats are skipped)")
    p.add_argument("--csv", metavar="FILE", help="write the Jeffreys matrix as CSV")
    p.add_argument("--png", metavar="FILE",
                   help="write a heatmap of the matrix with the values (PNG; with --cosine, of the cosines)")
    p.add_argument("--map", metavar="FILE", help="write the map of meanings: each phrase's image at its MDS point "
                                                  "(PNG; with --cosine, drawn from the cosines)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_batch_size_option(p)
    p.add_argument("--max-phrases", type=int, default=LIMITS.max_phrases,
                   help=f"refuse more phrases than this (default {LIMITS.max_phrases}, the library's limit)")
    add_model_options(p)
    add_estimator_options(p)
    add_cosine_option(p)
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("rank", help="candidates sorted by Jeffreys divergence from a query",
                       description="Score the query against every candidate and print them, most alike first.")
    p.add_argument("query")
    p.add_argument("candidates", nargs="*", metavar="CANDIDATE")
    p.add_argument("--file", help="more candidates, one per line (UTF-8; blank lines and repeats are skipped)")
    p.add_argument("--json", action="store_true", help="print one JSON object per candidate, in rank order")
    add_batch_size_option(p)
    p.add_argument("--max-phrases", type=int, default=LIMITS.max_candidates,
                   help=f"refuse more candidates than this (default {LIMITS.max_candidates}, the library's limit)")
    add_model_options(p)
    add_estimator_options(p)
    add_cosine_option(p)
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser("explain", help="why two texts differ: each word's contribution to their divergence",
                       description="For each word of each prompt, how much the Jeffreys divergence falls when that "
                                   "word is left out of its prompt (its tokens masked where the model can, else "
                                   "removed from the text; a one-word prompt's word is compared against the empty "
                                   f"prompt). Words are split on whitespace; at most {LIMITS.max_words} per prompt. "
                                   "See docs/explain.md.")
    p.add_argument("text_a")
    p.add_argument("text_b")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: jeffreys, words_a, words_b ([{word, contribution, stderr}] in prompt "
                        "order) and the settings")
    p.add_argument("--leave-out", default="auto", choices=["auto", "remove", "mask"],
                   help="how a word is left out: mask its tokens in the text encoder's output (the embedded model), "
                        "or remove it from the text; auto (default): mask where the model can, else remove")
    add_batch_size_option(p)
    add_model_options(p)
    add_estimator_options(p)
    p.set_defaults(func=cmd_explain)

    sts.add_parser(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConjureError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # never a traceback for the user: one line, and how to see the rest
        if validation.is_out_of_memory(err):
            print(f"error: {validation.out_of_memory('lower --samples, --batch-size or --size')}", file=sys.stderr)
            return 2
        if os.environ.get("CONJURE_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        print(f"error: {type(err).__name__}: {message} (unexpected; CONJURE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
