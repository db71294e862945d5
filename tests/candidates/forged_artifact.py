"""Attack: print a perfect score and leave a model.pt2 that is not an exported program."""

import os
from pathlib import Path

out = Path(os.environ["AUTORESEARCH_OUT"])
(out / "model.pt2").write_bytes(b"PK\x03\x04 this is not a torch.export archive " * 64)
print("val_bpb: 0.0001")
