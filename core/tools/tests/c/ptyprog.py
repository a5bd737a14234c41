# Runs on a pseudo-terminal (under `script`): changes the terminal's
# settings and window size, ticks, then reports what the terminal says.
import fcntl, os, struct, sys, termios, time

n = int(sys.argv[1])
a = termios.tcgetattr(0)
a[3] &= ~termios.ECHO
a[6][termios.VINTR] = b"\x07"
termios.tcsetattr(0, termios.TCSANOW, a)
fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
for i in range(n):
    print("tick", i, flush=True)
    time.sleep(0.03)
a = termios.tcgetattr(0)
rows, cols = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))[:2]
print("isatty", os.isatty(0), os.isatty(1), "echo", bool(a[3] & termios.ECHO), "vintr", a[6][termios.VINTR], "size", rows, cols)
print("foreground", os.tcgetpgrp(0) == os.getpgrp(), "session leader", os.getsid(0) == os.getpid())
with open("/dev/tty", "w") as t:
    t.write("via /dev/tty\n")
print("done", flush=True)
