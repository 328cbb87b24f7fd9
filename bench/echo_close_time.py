#!/usr/bin/env python3
# Time a large echo plus close on one connection: `python3 bench/echo_close_time.py PORT BYTES`
# against `pst echo --addr 127.0.0.1:PORT`. Shows a stall when the last send's completion is
# not reaped promptly (issue 14: 105-117 ms with the 100 ms tick before the fix, 6-15 ms after).
import socket, sys, time, threading
port=int(sys.argv[1]); n=int(sys.argv[2])
for r in range(5):
    c=socket.create_connection(("127.0.0.1",port)); data=b"x"*n
    t=time.time()
    def w():
        c.sendall(data); c.shutdown(socket.SHUT_WR)
    th=threading.Thread(target=w); th.start()
    got=0
    while True:
        b=c.recv(1<<16)
        if not b: break
        got+=len(b)
    th.join()
    print(f"{got} bytes echoed + EOF in {(time.time()-t)*1000:.1f} ms")
