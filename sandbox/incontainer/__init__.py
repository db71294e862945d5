"""Code that runs inside the containers (the only project code the trainer image needs besides prepare.py).

Deliberate: nothing here imports controller code (sandbox.engine, harness, docker); the controller may
import from here, never the other way round.
"""
