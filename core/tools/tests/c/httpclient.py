# Fetches a file from a local HTTP server N times and checks its digest.
import hashlib, sys, time, urllib.request

port, n = int(sys.argv[1]), int(sys.argv[2])
want = hashlib.sha256(open("data.bin", "rb").read()).hexdigest()
url = "http://127.0.0.1:%d/data.bin" % port
for _ in range(200):  # wait for the server
    try:
        urllib.request.urlopen(url).read()
        break
    except OSError:
        time.sleep(0.05)
ok = 0
for i in range(n):
    body = urllib.request.urlopen(url, timeout=30).read()
    good = hashlib.sha256(body).hexdigest() == want
    ok += good
    print("fetch %d %s" % (i, "ok" if good else "BAD"), flush=True)
    time.sleep(0.02)
print("fetches ok", ok, "of", n, flush=True)
