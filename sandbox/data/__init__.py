"""Building a profile's data folder: the host-side half of the frozen workload.

prepare.py is the contract train.py and the evaluator read (profiles, layout, loaders, the metric); this
package makes the files it reads: `download` (the gpu corpus over HTTP, verified and resumable),
`corpus` (the tiny profile's grammar) and `tiny` (its pinned train split and secret val split), and
`build` (tokenizer training, token shards, manifest.json; `python -m sandbox.data` or
`python prepare.py`). Nothing here is imported by train.py or the evaluator, and this file imports
nothing, so `sandbox.data.corpus` stays cheap to import on its own.
"""
