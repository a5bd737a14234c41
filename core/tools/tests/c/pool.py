# python3 with a thread pool and subprocesses across checkpoint/restart.
import concurrent.futures, subprocess, sys, time, hashlib
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
def work(i):
    h = hashlib.sha256()
    for k in range(2000):
        h.update(f"{i}-{k}".encode())
    return h.hexdigest()[:8]
digest = hashlib.sha256()
with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    for s in range(steps):
        parts = list(pool.map(work, range(s * 4, s * 4 + 4)))
        out = subprocess.run(["sh", "-c", f"echo {s} $((s={s}*{s}))"], capture_output=True, text=True, check=True).stdout
        digest.update(("".join(parts) + out).encode())
        print(f"step {s}", flush=True)
        time.sleep(0.1)
print("RESULT", digest.hexdigest())
