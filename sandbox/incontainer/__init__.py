"""The in-container trust zone: the only project code the trainer image holds (with prepare.py).

What runs inside TRAIN and EVAL, and nothing else: the jail (`jail`), the trusted evaluator
(`evaluate`, `python -m sandbox.incontainer.evaluate`), the artifact checks (`archive`, `program`,
`graph`), the behavioural probes (`probes`) and the names that cross the container boundary
(`constants`). Deliberate: nothing here imports the rest of `sandbox` or `harness` (the image does not
hold them, and a test imports each module inside the image to prove it), and this file imports nothing.
"""
