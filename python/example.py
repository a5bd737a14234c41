"""Example: a Python program that checkpoints itself and protects a critical section."""
import time

import dmtcp

print("enabled", dmtcp.is_enabled(), flush=True)
total = 0
for i in range(12):
    total += i
    print("step", i, flush=True)
    if i == 3:
        r = dmtcp.checkpoint()
        name = {dmtcp.RESUMED: "resumed", dmtcp.RESTARTED: "restarted", dmtcp.NOT_PRESENT: "absent"}[r]
        print("checkpoint", name, "generation", dmtcp.generation(), flush=True)
    if i == 6:
        with dmtcp.checkpoints_disabled():
            print("section begin", flush=True)
            time.sleep(1.5)
            print("section end", flush=True)
    time.sleep(0.15)
print("RESULT", total, flush=True)
