# One long-lived connection to a Redis server: INCR a counter N times,
# checking every reply, then print the counter.
import socket, sys, time

port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(400):  # wait for the server
    try:
        s = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        time.sleep(0.05)
f = s.makefile("rb")

def cmd(*args):
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    line = f.readline()
    if line.startswith(b"$"):
        return f.read(int(line[1:]) + 2)[:-2]
    return line.strip()

for i in range(1, n + 1):
    r = cmd(b"INCR", b"counter")
    if r != b":%d" % i:
        print("INCR %d got %r" % (i, r), flush=True)
        sys.exit(1)
    if i % 50 == 0:
        print("incr", i, flush=True)
    time.sleep(0.004)
print("final", cmd(b"GET", b"counter").decode(), flush=True)
