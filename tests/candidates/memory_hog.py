"""Attack: allocate (and touch) memory without bound, hoping to starve the host."""

chunks = []
print("allocating", flush=True)
while True:
    chunks.append(bytearray(16 * 1024 * 1024))  # bytearray zero-fills: the pages are really touched
