# One Python process: a thread streams a known pattern through a
# socketpair, the main thread reads it slowly and checks it; a second
# thread serves an echo over TCP to a third thread. Prints progress and
# totals.
import hashlib, socket, sys, threading, time

MB = int(sys.argv[1])
a, b = socket.socketpair()

def pattern(i):
    return hashlib.sha256(str(i).encode()).digest() * 256  # 8 KiB

def produce():
    for i in range(MB * 128):
        b.sendall(pattern(i))
    b.shutdown(socket.SHUT_WR)

srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
port = srv.getsockname()[1]

def echo():
    c, _ = srv.accept()
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()

threading.Thread(target=produce).start()
threading.Thread(target=echo).start()
cl = socket.create_connection(("127.0.0.1", port))
cl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
got, i, buf, echoed = 0, 0, b"", 0
while True:
    d = a.recv(32768)
    if not d:
        break
    buf += d
    while len(buf) >= 8192:
        if buf[:8192] != pattern(i):
            print("MISMATCH at block", i, flush=True)
            sys.exit(1)
        buf = buf[8192:]
        i += 1
        if i % 128 == 0:
            msg = ("block %d\n" % i).encode() * 50
            cl.sendall(msg)
            back = b""
            while len(back) < len(msg):
                back += cl.recv(65536)
            echoed += back == msg
            print("got %d MB" % (i // 128), flush=True)
    time.sleep(0.002)
nodelay = cl.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
cl.close()
print("blocks", i, "left", len(buf), "echoes ok", echoed, "nodelay", nodelay, flush=True)
