"""The STS benchmark harness: `python -m conjure sts`.

Reproduces the paper's evaluation, Spearman correlation x100 between human
similarity and -D_J on STS-B (test), STS12-16 and SICK-R, and on MEN's word
relatedness (dev and test), beside baselines
(the model's own text encoder, all-MiniLM-L6-v2), with a resumable score cache
and sharding across processes under `accelerate launch`.

    data.py      the test sets and MEN: file layouts, hub copies, subsampling, the full-stop rule
    methods.py   the similarity methods and what their scores depend on (the cache key)
    store.py     the SQLite score cache
    report.py    correlations (scipy) and the Markdown tables
    command.py   the command line and the run
    compare.py   paired bootstrap intervals between two runs' Spearman (python -m conjure.sts.compare)
"""

from conjure.sts.command import add_parser, cmd_sts

__all__ = ["add_parser", "cmd_sts"]
